"""Live incremental decoding for many sources at once: one ``IncrementalDecoder`` per engine, one row per source.

Each source's bridge holds a ``LiveStream`` (its row). A bin that arrives is stepped together with the bins of the
other sources that are waiting at that moment, in one batched computation (``IncrementalDecoder.step_rows``: rows
keep their own clocks, so sources at any phase batch together). The batching is flat combining: a bridge thread
queues its bin and takes the decoder's lock; whoever holds the lock steps everything queued and hands each bridge
its answer, so no thread of its own sits in between and a lone source pays no wait. One step runs at a time: a step
is many small numpy calls that hold the GIL, and threads that interleave them hand the GIL back and forth at every
call (16 sources each stepping alone at 50 Hz: 57 ms a step instead of 1.5, ``scripts/live_step_checks.py``),
while threads waiting on a lock sleep in C. The queue and locks are the standard library's; the combining is
written here (a dozen lines).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from alignnet.model.contract import DataContract
from alignnet.model.incremental import IncrementalDecoder


@dataclass
class _Job:
    row: int
    x: np.ndarray  # (m, C) normalised bins, oldest first
    out: np.ndarray | None = None  # (m, D) normalised behavior
    error: BaseException | None = None
    done: bool = False


class StreamPool:
    """The rows of one artifact's incremental decoder, shared by its live sources; ``stats`` counts batched steps."""

    def __init__(self, weights: dict[str, np.ndarray], window_bins: int) -> None:
        self.decoder = IncrementalDecoder(weights, window_bins, batch=0)
        self._lock = threading.Lock()  # held while stepping
        self._queue_lock = threading.Lock()  # guards the queue only
        self._queue: list[_Job] = []
        self.stats = {"steps": 0, "bins": 0, "largest_batch": 0}

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

    def push(self, counts: np.ndarray) -> np.ndarray:
        """(m, C) counts -> (D, m) behavior."""
        y = self.pool.run(self.row, self._scaled(np.asarray(counts, np.float32).T))  # (m, D)
        return self.contract.postprocess_behavior(y.T[None])[0]

    def prime(self, window: np.ndarray) -> None:
        """(C, W) past bins, oldest first."""
        self.pool.prime(self.row, self._scaled(window))
