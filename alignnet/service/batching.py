"""Micro-batching: the hops of many LSL sources that fall due within a short wait, or the windows of concurrent HTTP
requests, are decoded in one engine call.

Each bridge thread (or HTTP worker) hands its windows to ``HopBatcher.decode_newest`` (``decode``) and blocks; a
batcher thread takes the first waiting job, waits ``wait_s`` for others, takes its share of those waiting (at most
``max_batch`` jobs), runs the engine once per (engine, newest bins) group and hands each caller its rows back. Each
output keeps its own input's stamp (the bridge pushes it). The queue and the wait are the standard library's; the
grouping is written here.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Job:
    engine: object
    windows: np.ndarray  # (n, C, W): counts for the newest bins, normalised input for whole windows
    k: int | None  # newest bins, or None: whole windows
    done: threading.Event = field(default_factory=threading.Event)
    out: np.ndarray | None = None
    error: BaseException | None = None


class HopBatcher:
    """Decoding threads shared by the bridges (``workers``, one engine thread each: ONNX Runtime releases the GIL,
    so two workers use two cores); ``stats`` counts engine calls and windows.

    A window costs about the same at any batch size on one CPU thread (measured: docs/benchmarks.md), so a batch
    saves only the per-call overhead while its last window waits for all the others: a worker takes its share of
    what is waiting (the queue split evenly among the workers), not all of it."""

    def __init__(self, wait_s: float = 0.001, max_batch: int = 64, workers: int = 2, name: str = "hop-batcher") -> None:
        if wait_s < 0 or max_batch < 1 or workers < 1:
            raise ValueError(f"wait_s must be >= 0, max_batch and workers >= 1; got {wait_s}, {max_batch}, {workers}")
        self.wait_s, self.max_batch, self.workers = wait_s, max_batch, workers
        self._q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.stats = {"calls": 0, "windows": 0, "largest_batch": 0, "engine_s": 0.0}
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def decode_newest(self, engine, window: np.ndarray, k: int) -> np.ndarray:
        """(C, W) window -> (D, k) behavior of its newest ``k`` bins, decoded together with other bridges' hops."""
        return self._wait(_Job(engine, window[None], k))[0]

    def decode(self, engine, x: np.ndarray) -> np.ndarray:
        """(n, C, W) normalised windows (``contract.preprocess_spikes``: checked before they join anyone's batch)
        -> (n, D, W) behavior, decoded together with other callers' windows."""
        return self._wait(_Job(engine, x, None))

    def _wait(self, job: _Job) -> np.ndarray:
        self._q.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.out

    def stop(self) -> None:
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join(5)

    def _collect(self, first: _Job) -> list[_Job]:
        """``first``, then (after ``wait_s`` for others to fall due) this worker's share of what waits."""
        if self.wait_s:
            time.sleep(self.wait_s)
        share = min(self.max_batch, -(-(1 + self._q.qsize()) // self.workers))
        jobs = [first]
        while len(jobs) < share:
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._q.put(None)  # stop after this batch
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while (first := self._q.get()) is not None:
            jobs = self._collect(first)
            groups: dict[tuple[int, int], list[_Job]] = {}
            for job in jobs:
                groups.setdefault((id(job.engine), job.k), []).append(job)
            for group in groups.values():
                t, n = time.perf_counter(), sum(len(j.windows) for j in group)
                try:
                    x, k = np.concatenate([j.windows for j in group]), group[0].k
                    y = group[0].engine.decode_scaled(x) if k is None else group[0].engine.decode_newest(x, k)
                    for j, out in zip(group, np.split(y, np.cumsum([len(j.windows) for j in group])[:-1])):
                        j.out = out
                except BaseException as e:  # handed to every waiting bridge, which reports it
                    for j in group:
                        j.error = e
                finally:
                    for j in group:
                        j.done.set()
                with self._lock:
                    self.stats["engine_s"] += time.perf_counter() - t
                    self.stats["calls"] += 1
                    self.stats["windows"] += n
                    self.stats["largest_batch"] = max(self.stats["largest_batch"], n)
