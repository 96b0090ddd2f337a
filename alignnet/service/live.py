"""Live incremental decoding for many sources at once: one ``IncrementalDecoder`` per engine, one row per source.

Each source's bridge holds a ``LiveStream`` (its row). Bins are stepped in batches across sources
(``IncrementalDecoder.step_rows``: rows keep their own clocks, so sources at any phase batch together), one step at
a time (when a step was many small numpy calls holding the GIL, 16 sources each stepping alone at 50 Hz took 57 ms
a step instead of 1.5, ``scripts/live_step_checks.py``; a step is now one ONNX Runtime call). Two ways in:

- ``submit`` (the LSL bridges): the bins are queued and the bridge goes back to its source at once. The pool's own
  stepping thread waits up to ``wait_s`` for every open row to have bins, steps them all in one batch and hands the
  outputs to the pool's output thread, which calls each submitter back (the bridges push to LSL there) while the
  next batch steps. Before this, each bridge stepped (or waited for) the batch itself and then pushed its own
  output: 32 bridge threads queued for the decoder's lock and the GIL one after another every bin, a step caught
  only the few sources that had got in meanwhile (5.8 bins a step at 32 sources), and the service fell behind
  (docs/benchmarks.md).
- ``run``/``run_many`` (a caller with its bins in hand: FALCON's sessions, tests): flat combining. The caller queues
  its bins and takes the decoder's lock; whoever holds it steps everything queued, so no thread sits in between.

The queue, locks and condition are the standard library's; the batching is written here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from alignnet.model.contract import DataContract
from alignnet.model.incremental import IncrementalDecoder

log = logging.getLogger(__name__)


@dataclass
class _Job:
    row: int
    x: np.ndarray  # (m, C) normalised bins, oldest first
    out: np.ndarray | None = None  # (m, D) normalised behavior
    error: BaseException | None = None
    done: bool = False
    callback: Callable | None = None  # submitted bins: called with (out or None, error) on the output thread


class StreamPool:
    """The rows of one artifact's incremental decoder, shared by its live sources; ``stats`` counts batched steps
    and their time. ``wait_s``: how long the stepping thread waits for every open row's bins before a step."""

    IDLE_S = 5.0  # the stepping and output threads end after this long without work; the next submit restarts them

    def __init__(self, weights: dict[str, np.ndarray], window_bins: int, wait_s: float = 0.001) -> None:
        self.decoder = IncrementalDecoder(weights, window_bins, batch=0)
        self.wait_s = wait_s
        self._lock = threading.Lock()  # held while stepping
        self._queue_lock = threading.Lock()  # guards the flat-combining queue only
        self._queue: list[_Job] = []
        self._cv = threading.Condition()  # guards the submitted bins and the stepping thread
        self._submitted: list[_Job] = []
        self._worker: threading.Thread | None = None
        self._outputs: queue.SimpleQueue = queue.SimpleQueue()  # stepped batches for the output thread
        self._caller: threading.Thread | None = None
        self.stats = {"steps": 0, "bins": 0, "largest_batch": 0, "step_s": 0.0}

    def open(self) -> int:
        with self._lock:
            return self.decoder.open()

    def close(self, row: int) -> None:
        """Free a row (called by a stream's finalizer, which may run anywhere, even inside a step on this thread:
        so no lock; marking a row free is one assignment, and a step never reads the mark)."""
        self.decoder.close(row)

    def prime(self, row: int, x: np.ndarray) -> None:
        """Restart ``row`` from (m, C) normalised past bins."""
        with self._lock:
            self.decoder.reset([row])
            for k in range(len(x)):
                self.decoder.step_rows([row], x[k:k + 1], output=False)

    def open_rows(self) -> int:
        return int(self.decoder.rows_open.sum())

    def submit(self, row: int, x: np.ndarray, callback: Callable) -> None:
        """Queue (m, C) normalised bins of ``row`` and return at once. ``callback(out, error)`` follows on the pool's
        output thread: out (m, D), or None with the exception that stopped the step. A row's callbacks come in the
        order of its submits."""
        job = _Job(row, x, callback=callback)
        with self._cv:
            self._submitted.append(job)
            self._cv.notify()
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="stream-pool", daemon=True)
                self._worker.start()

    def _take(self) -> list[_Job] | None:
        """The submitted bins, once there are some and every open row has some or ``wait_s`` has passed; None
        after ``IDLE_S`` without any (the thread then ends)."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._submitted, self.IDLE_S):
                self._worker = None
                return None
            end, n_open = time.monotonic() + self.wait_s, self.open_rows()
            while len({j.row for j in self._submitted}) < n_open and (left := end - time.monotonic()) > 0:
                self._cv.wait(left)
            jobs, self._submitted = self._submitted, []
            return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            by_row: dict[int, list[_Job]] = {}  # a step takes each row once: a row's queued bins go in together
            for j in jobs:
                by_row.setdefault(j.row, []).append(j)
            merged = [_Job(row, js[0].x if len(js) == 1 else np.concatenate([j.x for j in js]))
                      for row, js in by_row.items()]
            with self._lock:
                self._step(merged)
            self._outputs.put(list(zip(merged, by_row.values())))
            with self._cv:
                if self._caller is None:
                    self._caller = threading.Thread(target=self._call_back, name="stream-pool-out", daemon=True)
                    self._caller.start()

    def _call_back(self) -> None:
        """The output thread: each stepped batch's callbacks, in order, while the stepping thread goes on (pushing 32
        outputs to LSL took more than half as long as their step; on the stepping thread the next batch waited).
        Ends after ``IDLE_S`` without a batch."""
        while True:
            try:
                batch = self._outputs.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self._cv:
                    if self._outputs.empty():  # checked under the lock the stepping thread starts us under
                        self._caller = None
                        return
                continue
            for m, js in batch:
                k = 0
                for j in js:
                    out, k = (None if m.error is not None else m.out[k:k + len(j.x)]), k + len(j.x)
                    try:
                        j.callback(out, m.error)
                    except Exception:  # one source's failure must not stop the others' outputs
                        log.exception("a live stream's callback failed")

    def run(self, row: int, x: np.ndarray) -> np.ndarray:
        """(m, C) normalised bins of one row -> (m, D), stepped with whatever other rows are waiting."""
        return self.run_many([(row, x)])[0]

    def run_many(self, items: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """Several rows' bins at once (a caller that has them together: FALCON's batch of sessions). A row belongs to
        one caller, so rows are distinct."""
        if len({row for row, _ in items}) < len(items):
            raise ValueError("run_many takes each row once")
        jobs = [_Job(row, x) for row, x in items]
        with self._queue_lock:
            self._queue.extend(jobs)
        with self._lock:
            if not all(j.done for j in jobs):  # step everything waiting, these jobs included
                with self._queue_lock:
                    queued, self._queue = self._queue, []
                self._step(queued)
        for job in jobs:
            if job.error is not None:
                raise job.error
        return [j.out for j in jobs]

    def _step(self, jobs: list[_Job]) -> None:
        t = time.perf_counter()
        try:
            outs = {id(j): [] for j in jobs}
            for k in range(max(len(j.x) for j in jobs)):  # the k-th bin of every job that has one
                batch = [j for j in jobs if k < len(j.x)]
                y = self.decoder.step_rows([j.row for j in batch], np.stack([j.x[k] for j in batch]))
                for j, row in zip(batch, y):
                    outs[id(j)].append(row)
                self.stats["steps"] += 1
                self.stats["bins"] += len(batch)
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            for j in jobs:
                j.out = np.stack(outs[id(j)])
        except BaseException as e:  # handed to every waiting bridge, which reports it
            for j in jobs:
                j.error = e
        finally:
            for j in jobs:
                j.done = True
            self.stats["step_s"] += time.perf_counter() - t


class LiveStream:
    """One live source's row of its engine's ``StreamPool``, in data units: ``push`` clean counts (m, C) (finite,
    non-negative: the live path's sanitised bins), get the behavior of each (D, m), the same numbers as
    ``Engine.decode_newest`` on the ring buffer after each bin. ``prime(window)`` restarts it from a window of past
    bins (a model swapped in mid-stream continues where the ring buffer is). The row is freed when the stream is
    garbage."""

    def __init__(self, contract: DataContract, pool: StreamPool) -> None:
        self.contract, self.pool = contract, pool
        self.row = pool.open()
        weakref.finalize(self, pool.close, self.row)

    def _scaled(self, counts: np.ndarray) -> np.ndarray:
        """(C, m) counts -> (m, C) normalised."""
        return np.ascontiguousarray(self.contract.scale_counts(np.asarray(counts, np.float32)[None])[0].T)

    @staticmethod
    def push_many(streams: list[LiveStream], counts: np.ndarray) -> np.ndarray:
        """One bin for each of ``streams`` (of one pool), (n, C) counts -> (n, D) behavior, stepped together."""
        c = streams[0].contract
        x = c.scale_counts(np.asarray(counts, np.float32).T[None])[0].T  # (n, C)
        y = streams[0].pool.run_many([(s.row, x[i:i + 1]) for i, s in enumerate(streams)])
        return c.postprocess_behavior(np.concatenate(y).T[None])[0].T

    def submit(self, counts: np.ndarray, callback: Callable) -> None:
        """(m, C) counts, returning at once: ``callback(behavior (D, m) or None, error)`` follows on the pool's
        output thread, once they are stepped with the other rows' waiting bins."""
        post = self.contract.postprocess_behavior

        def done(y: np.ndarray | None, error: BaseException | None) -> None:
            callback(None if y is None else post(y.T[None])[0], error)

        self.pool.submit(self.row, self._scaled(np.asarray(counts, np.float32).T), done)

    def push(self, counts: np.ndarray) -> np.ndarray:
        """(m, C) counts -> (D, m) behavior."""
        y = self.pool.run(self.row, self._scaled(np.asarray(counts, np.float32).T))  # (m, D)
        return self.contract.postprocess_behavior(y.T[None])[0]

    def prime(self, window: np.ndarray) -> None:
        """(C, W) past bins, oldest first."""
        self.pool.prime(self.row, self._scaled(window))
