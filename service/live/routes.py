"""The routes of a stream that decodes windows or simulates (``pipeline.py`` holds the incremental one, the ring and
the lag policy; ``batcher.py`` the batcher), and ``open_route``, which chooses a stream's route once."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from alignnet.service.live.batcher import BATCHER, Batcher, Group, Job
from alignnet.service.live.pipeline import IncrementalRoute, Lag, Route


class WindowGroup(Group):
    """One engine's windows: ``k`` newest bins of clean counts (the receptive-field graph where the artifact has one,
    ``Engine.decode_newest``), or whole normalised windows (``k`` None: HTTP requests). Stateless: ``slots`` calls at
    once (ONNX Runtime releases the GIL, so two use two cores)."""

    def __init__(self, engine, k: int | None, slots: int) -> None:
        super().__init__(slots)
        self.engine, self.k = engine, k

    def _run(self, jobs: list[Job]) -> tuple[int, int]:
        x = jobs[0].x if len(jobs) == 1 else np.concatenate([j.x for j in jobs])
        y = self.engine.decode_scaled(x) if self.k is None else self.engine.decode_newest(x, self.k)
        for j, out in zip(jobs, np.split(y, np.cumsum([len(j.x) for j in jobs])[:-1])):
            j.out = out
        return len(x), len(x)


def window_group(batcher: Batcher, engine, k: int | None, slots: int = 2) -> WindowGroup:
    """The batcher's group of ``engine``'s windows at ``k`` newest bins, made once (kept while the engine lives)."""
    with batcher.lock:
        groups = batcher.windows.setdefault(engine, {})
        if (k, slots) not in groups:
            groups[(k, slots)] = WindowGroup(engine, k, slots)
        return groups[(k, slots)]


class WindowRoute(Route):
    """Every hop from the ring's window: the newest bins' graph where the artifact has one for the hop (the
    receptive field: the same numbers, less work), else the whole window. With other sources on the engine the
    windows go through the batcher's window group. A backlog is cut to the newest hop (``Lag.newest``)."""

    def __init__(self, engine, ring, lag: Lag, emit: Callable, batcher: Batcher | None, slots: int) -> None:
        super().__init__(engine, ring, lag, emit)
        self.name = "receptive field" if 0 < self.hop <= engine.tail_hops else "window"
        self.batcher = batcher
        self.group = None if batcher is None else window_group(batcher, engine, self.hop, slots)
        self.pending: list[float] = []  # stamps short of a hop

    def push(self, bins: np.ndarray, stamps: np.ndarray) -> None:
        if len(self.pending) + len(bins) > self.lag.limit:  # fell behind: only the newest hop
            self.ring.push(bins)
            self._hop(self.lag.newest(self.pending + stamps.tolist()))
            self.pending = []
            return
        for row, t in zip(bins, stamps.tolist()):  # every hop, in order
            self.ring.push(row[None])
            self.pending.append(t)
            if len(self.pending) == self.hop:
                self._hop(self.pending)
                self.pending = []

    def close(self) -> int:
        part, self.pending = len(self.pending), []
        return part

    def _hop(self, stamps: list[float]) -> None:
        k = len(stamps)
        if self.group is not None:
            y = self.batcher.run(self.group, self.ring.buf[None])[0]
        else:
            y = self.engine.decode_newest(self.ring.buf[None], k)[0]
        self.emit(y[:, -k:].T, stamps)


class SimulateRoute(WindowRoute):
    """Behavior in, spikes out: the ring's window of behavior through the simulate graph every hop; Poisson counts
    drawn from the rates where the bridge asks for them (``rng``)."""

    name = "simulate"

    def __init__(self, engine, ring, lag: Lag, emit: Callable, rng: np.random.Generator | None) -> None:
        Route.__init__(self, engine, ring, lag, emit)
        self.rng, self.pending = rng, []

    def _hop(self, stamps: list[float]) -> None:
        y = self.engine.simulate(self.ring.buf[None])[0][:, -len(stamps):]
        if self.rng is not None:
            y = self.rng.poisson(y).astype(np.float32)
        self.emit(y.T, stamps)


def open_route(engine, counts: bool, ring, lag: Lag, emit: Callable, *, incremental: bool = True,
               batcher: Batcher | None = None, shared: bool = False, slots: int = 2,
               rng: np.random.Generator | None = None, prime: bool = False) -> Route:
    """The route of one stream, chosen once: for spike counts (``counts``) incremental where the artifact has it
    (and ``incremental``), else the newest bins' graph, else the window; for behavior the simulate graph.
    ``shared``: other sources decode on this engine too (their windows batch); ``prime``: an incremental route
    starts from the ring's window (a model swapped in mid-stream)."""
    if not counts:
        return SimulateRoute(engine, ring, lag, emit, rng)
    if incremental and engine.can_stream:
        return IncrementalRoute(engine, ring, lag, emit, batcher or BATCHER, prime)
    return WindowRoute(engine, ring, lag, emit, (batcher or BATCHER) if shared else None, slots)
