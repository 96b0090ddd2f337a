"""The live pipeline of one stream: its bins in, its outputs out, the same way for every source.

    Bridge (lsl.py)     reads a source, checks and bins its samples          (m, C) bins, time-major
      -> Route          chosen once per stream (``routes.open_route``): the engine's incremental rows where the
                        artifact has them (``IncrementalRoute``, here), else its newest-bins graph (the receptive
                        field), else the whole window (``routes.WindowRoute``)
      -> RowGroup       the engine's incremental decoder, one row per source; a lone source steps its own row
                        (``step_lone``), sources beside others go through the process's one batcher (batcher.py)
      -> Lag            the one lag policy
      -> Bridge.emit    each output stamped with its input bin's time

The stream's ``Ring`` (its last window of bins) is what a model swapped in mid-stream starts from, and what the
window routes decode.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

import numpy as np

from alignnet.model.contract import DataContract
from alignnet.model.incremental import IncrementalDecoder
from alignnet.service.live.batcher import BATCHER, Batcher, Group, Job


# ---- a stream's window and its lag -------------------------------------------------------------------------------
class Ring:
    """The last ``window`` bins, (C, window); starts as ``fill`` (zeros: no spikes) so the first bin is decoded too.

    Written by hand (a few lines; no maintained library gives a numpy ring that never allocates): every bin is
    stored twice, at k and k + window of a (C, 2 window) buffer, so the window is always one slice of it and
    ``push`` allocates nothing."""

    def __init__(self, n_channels: int, window: int, fill: np.ndarray | None = None) -> None:
        self.fill = np.zeros(n_channels, np.float32) if fill is None else np.asarray(fill, np.float32)
        self.window = int(window)
        self._buf = np.repeat(self.fill[:, None], 2 * self.window, axis=1)
        self._head = 0  # index of the oldest bin

    def reset(self) -> None:
        self._buf[:] = self.fill[:, None]
        self._head = 0

    @property
    def buf(self) -> np.ndarray:
        """(C, window) view, oldest bin first."""
        return self._buf[:, self._head:self._head + self.window]

    def push(self, bins: np.ndarray) -> None:
        """(m, C) bins, oldest first."""
        for row in bins[-self.window:]:
            self._buf[:, self._head] = row
            self._buf[:, self._head + self.window] = row
            self._head = (self._head + 1) % self.window


class Lag:
    """At most ``limit`` bins of one stream wait between its newest input and the output pushed next. A backlog
    beyond that keeps only the newest hop (``newest``: the rest are counted dropped, reason "lag"), and a stream
    with ``limit`` bins handed to the batcher waits for them before handing more (``take``/``give``): a batcher
    that falls behind slows its sources instead of queueing without end."""

    def __init__(self, limit: int, hop: int, drop: Callable[[int, str], None]) -> None:
        self.limit, self.hop, self.drop = int(limit), int(hop), drop
        self.in_flight = 0
        self._cv = threading.Condition()

    def newest(self, items: list) -> list:
        """``items`` (oldest first) cut to the newest hop when there are more than ``limit``."""
        if len(items) <= self.limit:
            return items
        self.drop(len(items) - self.hop, "lag")
        return items[-self.hop:]

    def take(self, n: int, timeout: float = 5.0) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: self.in_flight == 0 or self.in_flight + n <= self.limit, timeout):
                raise RuntimeError(f"the live decoder gave nothing back for {timeout:g} s")
            self.in_flight += n

    def give(self, n: int) -> None:
        with self._cv:
            self.in_flight -= n
            self._cv.notify_all()


# ---- the incremental rows of one engine --------------------------------------------------------------------------
class RowGroup(Group):
    """The rows of one artifact's incremental decoder, one per live source (rows keep their own clocks, so sources
    at any phase step together); a step is one ONNX Runtime call (``model/incremental.py``). Jobs are clean counts
    in rows, (m, C), and come back as behavior in data units, (m, D): the contract's per-bin maps are applied here,
    time-major, so no chunk is transposed to (B, C, T) and back."""

    def __init__(self, weights: dict[str, np.ndarray], contract: DataContract) -> None:
        super().__init__(1)
        self.decoder = IncrementalDecoder(weights, contract.window_bins, batch=0)
        # log1p(bins) / scale in, out * std + mean out: ``scale_counts`` and ``postprocess_behavior`` for bins in
        # rows (tests/test_incremental.py checks the stream against the window's newest bin through the contract)
        self.scale, self.std, self.mean = contract.bin_affine()
        self.n_open = 0  # rows open: a lone source (1) steps its own row, beside others it submits
        self.stats["steps"] = 0  # a call steps each bin of its longest row: items / steps = rows per step
        self._lock = threading.Lock()  # the decoder's state: steps, opening and priming rows

    def expected(self) -> int:
        return self.n_open

    def open(self) -> int:
        with self._lock:
            row = self.decoder.open()
            self.n_open = int(self.decoder.rows_open.sum())
            return row

    def close(self, row: int) -> None:
        """Free a row (a finalizer, which may run inside a step: no lock; a step never reads the mark)."""
        self.decoder.close(row)
        self.n_open = int(self.decoder.rows_open.sum())

    def step_lone(self, row: int, counts: np.ndarray, count: bool = True) -> np.ndarray:
        """(m, C) counts of ``row`` -> (m, D) behavior, stepped here, bin by bin (a lone source: no batch to wait
        for). ``count``: add the call to ``stats`` (the batcher's calls count themselves)."""
        t = time.perf_counter()
        x = np.log1p(counts, dtype=np.float32) / self.scale
        with self._lock:
            y = np.concatenate([self.decoder.step_rows([row], x[k:k + 1]) for k in range(len(x))])
        st = self.stats
        st["steps"] += len(x)
        if count:
            st["calls"], st["items"], st["largest_batch"] = st["calls"] + 1, st["items"] + len(x), \
                max(st["largest_batch"], 1)
            st["run_s"] += time.perf_counter() - t
        return y * self.std + self.mean

    def _run(self, jobs: list[Job]) -> tuple[int, int]:
        if len(jobs) == 1:  # one job (a lone caller of the batcher): no grouping by row, no stacking
            jobs[0].out = self.step_lone(jobs[0].row, jobs[0].x, count=False)
            return len(jobs[0].x), 1
        by_row: dict[int, list[Job]] = {}  # a step takes each row once: a row's queued bins go in together
        for j in jobs:
            by_row.setdefault(j.row, []).append(j)
        xs = {r: np.log1p(js[0].x if len(js) == 1 else np.concatenate([j.x for j in js]), dtype=np.float32)
              / self.scale for r, js in by_row.items()}
        outs: dict[int, list] = {r: [] for r in xs}
        with self._lock:
            for k in range(max(len(x) for x in xs.values())):  # the k-th bin of every row that has one
                rows = [r for r, x in xs.items() if k < len(x)]
                y = self.decoder.step_rows(rows, np.stack([xs[r][k] for r in rows]))
                for r, out in zip(rows, y):
                    outs[r].append(out)
                self.stats["steps"] += 1
        for r, js in by_row.items():
            y, i = np.stack(outs[r]) * self.std + self.mean, 0
            for j in js:
                j.out, i = y[i:i + len(j.x)], i + len(j.x)
        return sum(len(x) for x in xs.values()), len(xs)  # the first step takes every row

    def prime(self, row: int, counts: np.ndarray) -> None:
        """Restart ``row`` from (m, C) past counts (a model swapped in mid-stream)."""
        x = np.log1p(counts, dtype=np.float32) / self.scale
        with self._lock:
            self.decoder.reset([row])
            for k in range(len(x)):
                self.decoder.step_rows([row], x[k:k + 1], output=False)


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
        return self.batcher.run(self.rows, self._checked(counts), self.row)

    def submit(self, counts: np.ndarray, callback: Callable) -> None:
        """(m, C) counts, returning at once: ``callback(behavior (m, D) or None, error)`` follows on the batcher's
        output thread, once they are stepped with the other rows' waiting bins."""
        self.batcher.submit(self.rows, self._checked(counts), self.row, callback)

    @staticmethod
    def push_many(streams: list[LiveStream], counts: np.ndarray) -> np.ndarray:
        """One bin for each of ``streams`` (of one engine), (n, C) counts -> (n, D) behavior, stepped together."""
        x = streams[0]._checked(counts)
        y = streams[0].batcher.run_many(streams[0].rows, [(s.row, x[i:i + 1]) for i, s in enumerate(streams)])
        return np.concatenate(y)

    def prime(self, window: np.ndarray) -> None:
        """(W, C) past counts, oldest first."""
        self.rows.prime(self.row, self._checked(window))

    def _checked(self, counts: np.ndarray) -> np.ndarray:
        """Counts in rows of the contract's channels, float32, or a ValueError at the door (not in a step)."""
        x = np.asarray(counts, np.float32)
        if x.ndim != 2 or x.shape[1] != self.contract.n_channels:
            raise ValueError(f"live counts must be (bins, {self.contract.n_channels} channels), got {x.shape}")
        return x


# ---- the route of one stream, chosen once ------------------------------------------------------------------------
class Route:
    """How one stream's bins become outputs. ``push(bins, stamps)`` takes (m, C) clean bins, oldest first, and puts
    them in the stream's window ``ring`` (what a model swapped in mid-stream, and the drift gauge, read); outputs go
    to ``emit(y (k, D), stamps)`` a hop at a time, each with its input bin's stamp. ``name`` is what /health
    shows."""

    name = "?"

    def __init__(self, engine, ring: Ring, lag: Lag, emit: Callable) -> None:
        self.engine, self.ring, self.lag, self.emit = engine, ring, lag, emit
        self.hop = lag.hop

    def push(self, bins: np.ndarray, stamps: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> int:
        """The stream ends (a new model or source): what is still in flight is dropped when it comes back. Returns
        how many input bins were waiting short of a hop (dropped with it)."""
        return 0


class IncrementalRoute(Route):
    """Every bin from the engine's incremental rows (the history needs each bin, so none is skipped). A lone source
    with nothing in flight steps its own row (no hand-off to another thread); beside other sources the bins are
    submitted to the batcher and the bridge is back at its source at once."""

    name = "incremental"

    def __init__(self, engine, ring: Ring, lag: Lag, emit: Callable, batcher: Batcher, prime: bool) -> None:
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
        if self.lag.in_flight == 0 and s.rows.n_open <= 1:
            self._decoded(t, s.rows.step_lone(s.row, bins), None)
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
        pending = self.pending + list(zip(stamps, y))
        if len(pending) > self.lag.limit:
            pending = self.lag.newest(pending)
        while len(pending) >= self.hop:
            self.emit(np.stack([v for _, v in pending[:self.hop]]), [t for t, _ in pending[:self.hop]])
            pending = pending[self.hop:]
        self.pending = pending

    def close(self) -> int:
        self.open = False
        return 0  # its part-filled hop holds outputs, not inputs: those bins were decoded
