"""The live pipeline: a stream's bins in, its outputs out, the same way for every source.

    Bridge (lsl.py)     reads a source, checks and bins its samples          (m, C) bins, time-major
      -> Route          chosen once per stream (``open_route``): the engine's incremental rows where the artifact
                        has them, else its newest-bins graph (the receptive field), else the whole window
      -> Batcher        the one cross-source batcher: every source's (and HTTP request's) jobs of one group run
                        in one engine call
      -> Lag            the one lag policy (routes.py)
      -> Bridge.emit    each output stamped with its input bin's time

Two ways through the batcher. ``run`` (a caller with its bins in hand, and nothing of its own in flight: a lone
LSL source, an HTTP request, FALCON's batch of sessions) is flat combining: the caller queues its job and, when a
slot of the group is free, runs whatever of the group is queued itself, so no thread sits in between.
``submit`` (LSL sources beside others) queues the job and returns at once: the batcher's stepping thread waits up
to ``wait_s`` for every open row of the group to have bins, runs them in one call, and its output thread calls
each submitter back while the next batch steps (before this, 32 bridge threads queued for the decoder's lock and
the GIL one after another every bin, and the service fell behind: docs/benchmarks.md).

Standard-library queue and locks; the batching is by hand (no maintained library batches calls with row state).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from alignnet.model.contract import DataContract
from alignnet.model.incremental import IncrementalDecoder

log = logging.getLogger(__name__)


# ---- the one cross-source batcher --------------------------------------------------------------------------------
@dataclass(eq=False)
class Job:
    x: np.ndarray  # a row's (m, C) normalised bins, or (n, C, W) windows
    row: int | None = None  # rows: the decoder row; windows: None
    callback: Callable | None = None  # submitted: called with (out or None, error) on the output thread
    out: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class Group:
    """Jobs that run together in one call; ``slots`` calls of a group may run at once (1 where the group holds
    state). ``stats`` counts its calls and their time."""

    def __init__(self, slots: int = 1) -> None:
        self.free = int(slots)
        self.queue: list[Job] = []  # run() callers' jobs, guarded by cv
        self.cv = threading.Condition()
        self.stats = {"calls": 0, "items": 0, "largest_batch": 0, "run_s": 0.0}

    def expected(self) -> int:
        """How many rows the stepping thread waits for before a call (0: none)."""
        return 0

    def call(self, jobs: list[Job]) -> None:
        """Run ``jobs``, setting each one's ``out`` (or every one's ``error``)."""
        t, n, batch = time.perf_counter(), 0, 0
        try:
            n, batch = self._run(jobs)
        except BaseException as e:  # handed to every caller, which reports it
            for j in jobs:
                j.error = e
        self.stats["calls"] += 1
        self.stats["items"] += n
        self.stats["largest_batch"] = max(self.stats["largest_batch"], batch)
        self.stats["run_s"] += time.perf_counter() - t

    def _run(self, jobs: list[Job]) -> tuple[int, int]:
        """-> (items run, the largest batch one engine call took)."""
        raise NotImplementedError


class RowGroup(Group):
    """The rows of one artifact's incremental decoder, one per live source (rows keep their own clocks, so sources
    at any phase step together); a step is one ONNX Runtime call (``model/incremental.py``)."""

    def __init__(self, weights: dict[str, np.ndarray], window_bins: int) -> None:
        super().__init__(1)
        self.decoder = IncrementalDecoder(weights, window_bins, batch=0)
        self.stats["steps"] = 0  # a call steps each bin of its longest row: items / steps = rows per step
        self._lock = threading.Lock()  # opening and priming rows, beside the steps

    def expected(self) -> int:
        return int(self.decoder.rows_open.sum())

    def open(self) -> int:
        with self._lock:
            return self.decoder.open()

    def close(self, row: int) -> None:
        """Free a row (a finalizer, which may run inside a step: no lock; a step never reads the mark)."""
        self.decoder.close(row)

    def _run(self, jobs: list[Job]) -> tuple[int, int]:
        if len(jobs) == 1:  # a lone source's bins (the common case): no grouping by row, no stacking
            j = jobs[0]
            with self._lock:
                outs = [self.decoder.step_rows([j.row], j.x[k:k + 1]) for k in range(len(j.x))]
                self.stats["steps"] += len(outs)
            j.out = outs[0] if len(outs) == 1 else np.concatenate(outs)
            return len(j.x), 1
        by_row: dict[int, list[Job]] = {}  # a step takes each row once: a row's queued bins go in together
        for j in jobs:
            by_row.setdefault(j.row, []).append(j)
        xs = {r: js[0].x if len(js) == 1 else np.concatenate([j.x for j in js]) for r, js in by_row.items()}
        outs: dict[int, list] = {r: [] for r in xs}
        with self._lock:
            for k in range(max(len(x) for x in xs.values())):  # the k-th bin of every row that has one
                rows = [r for r, x in xs.items() if k < len(x)]
                y = self.decoder.step_rows(rows, np.stack([xs[r][k] for r in rows]))
                for r, out in zip(rows, y):
                    outs[r].append(out)
                self.stats["steps"] += 1
        for r, js in by_row.items():
            y, i = np.stack(outs[r]), 0
            for j in js:
                j.out, i = y[i:i + len(j.x)], i + len(j.x)
        return sum(len(x) for x in xs.values()), len(xs)  # the first step takes every row

    def prime(self, row: int, x: np.ndarray) -> None:
        """Restart ``row`` from (m, C) normalised past bins (a model swapped in mid-stream)."""
        with self._lock:  # the lock the steps hold
            self.decoder.reset([row])
            for k in range(len(x)):
                self.decoder.step_rows([row], x[k:k + 1], output=False)


@dataclass
class _Batch:
    group: Group
    jobs: list[Job] = field(default_factory=list)

class Batcher:
    """The one cross-source batcher of a process (``BATCHER``; the LSL sources and the HTTP app share it).
    ``wait_s``: how long the stepping thread waits for every open row of a group before a call; ``max_batch``:
    the most jobs a ``run`` caller takes at once (its share when several slots are free)."""

    IDLE_S = 5.0  # the stepping and output threads end after this long without work; the next submit restarts them

    def __init__(self, wait_s: float = 0.001, max_batch: int = 64) -> None:
        if wait_s < 0 or max_batch < 1:
            raise ValueError(f"wait_s must be >= 0 and max_batch >= 1; got {wait_s}, {max_batch}")
        self.wait_s, self.max_batch = wait_s, max_batch
        self._cv = threading.Condition()  # guards the submitted jobs and the threads
        self.lock = threading.Lock()  # guards ``windows``
        self._submitted: list[tuple[Group, Job]] = []
        self._stepper: threading.Thread | None = None
        self._outputs: queue.SimpleQueue = queue.SimpleQueue()  # stepped batches for the output thread
        self._caller: threading.Thread | None = None
        self.windows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # routes.window_group's groups

    # ---- flat combining ----
    def run(self, group: Group, x: np.ndarray, row: int | None = None, wait_s: float = 0.0) -> np.ndarray:
        return self.run_many(group, [(row, x)], wait_s)[0]
    def run_many(self, group: Group, items: list[tuple[int | None, np.ndarray]],
                 wait_s: float = 0.0) -> list[np.ndarray]:
        """Several jobs at once -> their outputs, run with whatever else of ``group`` is queued. A row belongs to
        one caller, so rows are distinct. ``wait_s``: wait this long for others' jobs first (HTTP batching)."""
        rows = [r for r, _ in items if r is not None]
        if len(set(rows)) < len(rows):
            raise ValueError("run_many takes each row once")
        jobs = [Job(x, row) for row, x in items]
        with group.cv:
            group.queue.extend(jobs)
        if wait_s:
            time.sleep(wait_s)
        with group.cv:
            while not all(j.done for j in jobs):
                if not group.free or not group.queue:
                    group.cv.wait()
                    continue
                group.free -= 1
                share = min(self.max_batch, -(-len(group.queue) // (group.free + 1)))
                take, group.queue = group.queue[:share], group.queue[share:]
                group.cv.release()
                try:
                    group.call(take)
                finally:
                    group.cv.acquire()
                    group.free += 1
                    for j in take:
                        j.done = True
                    group.cv.notify_all()
        for j in jobs:
            if j.error is not None:
                raise j.error
        return [j.out for j in jobs]

    # ---- submitted jobs: the stepping and output threads ----
    def submit(self, group: Group, x: np.ndarray, row: int | None, callback: Callable) -> None:
        """Queue ``x`` and return at once. ``callback(out, error)`` follows on the output thread: out, or None with
        the exception that stopped the call. A row's callbacks come in the order of its submits."""
        with self._cv:
            self._submitted.append((group, Job(x, row, callback)))
            self._cv.notify()
            if self._stepper is None:
                self._stepper = threading.Thread(target=self._step, name="live-batcher", daemon=True)
                self._stepper.start()

    def _ready(self) -> bool:
        rows: dict[int, set] = {}
        groups = {}
        for g, j in self._submitted:
            rows.setdefault(id(g), set()).add(j.row)
            groups[id(g)] = g
        return all(len(rows[i]) >= g.expected() for i, g in groups.items())

    def _take(self) -> list[_Batch] | None:
        """The submitted jobs by group, once there are some and every open row has some or ``wait_s`` has passed;
        None after ``IDLE_S`` without any (the thread then ends)."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._submitted, self.IDLE_S):
                self._stepper = None
                return None
            end = time.monotonic() + self.wait_s
            while not self._ready() and (left := end - time.monotonic()) > 0:
                self._cv.wait(left)
            taken, self._submitted = self._submitted, []
        batches: dict[int, _Batch] = {}
        for g, j in taken:
            batches.setdefault(id(g), _Batch(g)).jobs.append(j)
        return list(batches.values())

    def _step(self) -> None:
        while (batches := self._take()) is not None:
            for b in batches:
                with b.group.cv:  # a slot of the group, as a run() caller takes one
                    b.group.cv.wait_for(lambda b=b: b.group.free > 0)
                    b.group.free -= 1
                try:
                    b.group.call(b.jobs)
                finally:
                    with b.group.cv:
                        b.group.free += 1
                        b.group.cv.notify_all()
            self._outputs.put(batches)
            with self._cv:
                if self._caller is None:
                    self._caller = threading.Thread(target=self._call_back, name="live-batcher-out", daemon=True)
                    self._caller.start()

    def _call_back(self) -> None:
        """The output thread: each stepped batch's callbacks, in order, while the stepping thread goes on (pushing 32
        outputs to LSL took more than half as long as their step). Ends after ``IDLE_S`` without a batch."""
        while True:
            try:
                batches = self._outputs.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self._cv:
                    if self._outputs.empty():  # checked under the lock the stepping thread starts us under
                        self._caller = None
                        return
                continue
            for b in batches:
                for j in b.jobs:
                    try:
                        j.callback(None if j.error is not None else j.out, j.error)
                    except Exception:  # one source's failure must not stop the others' outputs
                        log.exception("a live stream's callback failed")

    def idle(self) -> bool:
        return self._stepper is None and self._caller is None

BATCHER = Batcher()  # the process's one batcher; ``open_route`` and the HTTP app use it


# ---- one source's row --------------------------------------------------------------------------------------------
class LiveStream:
    """One live source's row of its engine's ``RowGroup``, in data units, time-major: ``push`` clean counts (m, C)
    (finite, non-negative: the live path's sanitised bins), get the behavior of each bin (m, D), the same numbers as
    ``Engine.decode_newest`` on the ring buffer after each bin. ``prime(window)`` restarts it from (W, C) past bins (a
    model swapped in mid-stream continues where the ring buffer is). The row is freed when the stream is garbage."""

    def __init__(self, contract: DataContract, rows: RowGroup, batcher: Batcher | None = None) -> None:
        self.contract, self.rows, self.batcher = contract, rows, batcher or BATCHER
        self.row = rows.open()
        weakref.finalize(self, rows.close, self.row)

    def push(self, counts: np.ndarray) -> np.ndarray:
        """(m, C) counts -> (m, D) behavior, stepped with whatever other rows are queued."""
        y = self.batcher.run(self.rows, self.contract.scale_bins(counts), self.row)
        return self.contract.behavior_bins(y)

    def submit(self, counts: np.ndarray, callback: Callable) -> None:
        """(m, C) counts, returning at once: ``callback(behavior (m, D) or None, error)`` follows on the batcher's
        output thread, once they are stepped with the other rows' waiting bins."""
        post = self.contract.behavior_bins
        self.batcher.submit(self.rows, self.contract.scale_bins(counts), self.row,
                            lambda y, error: callback(None if y is None else post(y), error))

    @staticmethod
    def push_many(streams: list[LiveStream], counts: np.ndarray) -> np.ndarray:
        """One bin for each of ``streams`` (of one engine), (n, C) counts -> (n, D) behavior, stepped together."""
        c = streams[0].contract
        x = c.scale_bins(counts)
        y = streams[0].batcher.run_many(streams[0].rows, [(s.row, x[i:i + 1]) for i, s in enumerate(streams)])
        return c.behavior_bins(np.concatenate(y))

    def prime(self, window: np.ndarray) -> None:
        """(W, C) past counts, oldest first."""
        self.rows.prime(self.row, self.contract.scale_bins(window))


# ---- the route of one stream, chosen once ------------------------------------------------------------------------
class Route:
    """How one stream's bins become outputs. ``push(bins, stamps)`` takes (m, C) clean bins, oldest first, and puts
    them in the stream's window ``ring`` (what a model swapped in mid-stream, and the drift gauge, read); outputs go
    to ``emit(y (k, D), stamps)`` a hop at a time, each with its input bin's stamp. ``name`` is what /health
    shows."""

    name = "?"

    def __init__(self, engine, ring, lag, emit: Callable) -> None:
        self.engine, self.ring, self.lag, self.emit = engine, ring, lag, emit
        self.hop = lag.hop

    def push(self, bins: np.ndarray, stamps: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> int:
        """The stream ends (a new model or source): what is still in flight is dropped when it comes back. Returns
        how many input bins were waiting short of a hop (dropped with it)."""
        return 0


class IncrementalRoute(Route):
    """Every bin from the engine's incremental rows (the history needs each bin, so none is skipped). Beside other
    sources the bins are submitted to the batcher and the bridge is back at its source at once; a lone source with
    nothing in flight runs its own bins (no hand-off to another thread)."""

    name = "incremental"

    def __init__(self, engine, ring, lag, emit: Callable, batcher: Batcher, prime: bool) -> None:
        super().__init__(engine, ring, lag, emit)
        self.stream = engine.open_stream(batcher)
        if prime:
            self.stream.prime(ring.buf.T)
        self.pending: list = []  # (stamp, output) pairs short of a hop; the output thread's alone
        self.error: BaseException | None = None  # a failed step, raised on the bridge's thread
        self.open = True

    def push(self, bins: np.ndarray, stamps: np.ndarray) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        self.ring.push(bins)
        s, t = self.stream, stamps.tolist()
        if self.lag.in_flight == 0 and s.rows.expected() <= 1:
            self._decoded(t, s.push(bins), None)
            return
        self.lag.take(len(t))
        s.submit(bins, lambda y, error: self._back(t, y, error))

    def _back(self, stamps: list[float], y, error) -> None:
        try:
            self._decoded(stamps, y, error)
        finally:
            self.lag.give(len(stamps))

    def _decoded(self, stamps: list[float], y, error) -> None:
        if error is not None:
            self.error = error
            return
        if not self.open:
            self.lag.drop(len(stamps), "reload")
            return
        pending = self.lag.newest(self.pending + list(zip(stamps, y)))
        while len(pending) >= self.hop:
            self.emit(np.stack([v for _, v in pending[:self.hop]]), [t for t, _ in pending[:self.hop]])
            pending = pending[self.hop:]
        self.pending = pending

    def close(self) -> int:
        self.open = False
        return 0  # its part-filled hop holds outputs, not inputs: those bins were decoded
