"""The one cross-source batcher of a process: every source's (and HTTP request's) jobs of one group run in one
engine call.

Two ways through it. ``run`` (a caller with its bins in hand, and nothing of its own in flight: an HTTP request,
FALCON's batch of sessions) is flat combining: the caller queues its job and, when a slot of the group is free,
runs whatever of the group is queued itself, so no thread sits in between. ``submit`` (LSL sources beside others)
queues the job and returns at once: the batcher's stepping thread waits up to ``wait_s`` for every open row of the
group to have bins, runs them in one call, and its output thread calls each submitter back while the next batch
steps (before this, 32 bridge threads queued for the decoder's lock and the GIL one after another every bin, and
the service fell behind: docs/benchmarks.md). A lone LSL source with nothing in flight skips the batcher
altogether (``pipeline.RowGroup.step_lone``).

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

log = logging.getLogger(__name__)


# ---- the one cross-source batcher --------------------------------------------------------------------------------
@dataclass(eq=False)
class Job:
    x: np.ndarray  # a row's (m, C) counts, or (n, C, W) windows
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


