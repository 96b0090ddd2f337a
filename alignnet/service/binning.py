"""Binning for the LSL bridge (pure numpy, tested without LSL): samples at a multiple of the bin rate -> bins,
irregular spike events -> bins, the ring buffer of one window, and the clean-up of bad samples.

Written here because no maintained library does these few lines for a live stream.
"""

from __future__ import annotations

import math

import numpy as np


class RegularBinner:
    """Samples at ``factor`` x the bin rate -> bins: counts are summed, behavior averaged. A bin is stamped with the
    time stamp of its last sample."""

    def __init__(self, factor: int, n_channels: int, reduce: str = "sum") -> None:
        self.factor, self.reduce = int(factor), reduce
        self.acc = np.zeros(n_channels, np.float64)
        self.n = 0

    def reset(self) -> None:
        self.acc[:] = 0
        self.n = 0

    def feed(self, samples: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, C) samples, (n,) stamps -> (m, C) bins, (m,) stamps."""
        if self.factor == 1:
            return samples.astype(np.float32), np.asarray(stamps, np.float64)
        bins, out_stamps = [], []
        for x, t in zip(samples, stamps):
            self.acc += x
            self.n += 1
            if self.n == self.factor:
                bins.append(self.acc / self.factor if self.reduce == "mean" else self.acc.copy())
                out_stamps.append(t)
                self.reset()
        if not bins:
            return np.zeros((0, self.acc.size), np.float32), np.zeros(0)
        return np.asarray(bins, np.float32), np.asarray(out_stamps)


class EventBinner:
    """Irregular spike events (channel index, time stamp) -> counts per bin on a grid anchored at the first event.
    A bin closes once ``now`` (this host's LSL clock, in the source's time) passes its end plus ``lateness``; it is
    stamped with its end time."""

    def __init__(self, bin_s: float, n_channels: int, lateness_s: float) -> None:
        self.bin_s, self.n_channels, self.lateness = float(bin_s), int(n_channels), float(lateness_s)
        self.reset()

    def reset(self) -> None:
        self.t0: float | None = None
        self.next_bin = 0
        self.pending: dict[int, np.ndarray] = {}

    def feed(self, channels: np.ndarray, stamps: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray, int]:
        """Returns (m, C) closed bins, (m,) their end stamps and the number of events dropped (late or bad)."""
        bad = 0
        for ch, t in zip(np.asarray(channels, np.float64).ravel(), stamps):
            if self.t0 is None:
                self.t0 = float(t)
            k = int(np.floor((t - self.t0) / self.bin_s))
            if not np.isfinite(ch) or ch != int(ch) or not 0 <= ch < self.n_channels or k < self.next_bin:
                bad += 1
                continue
            self.pending.setdefault(k, np.zeros(self.n_channels, np.float32))[int(ch)] += 1
        if self.t0 is None:
            return np.zeros((0, self.n_channels), np.float32), np.zeros(0), bad
        last = int(np.floor((now - self.lateness - self.t0) / self.bin_s))  # bins [next_bin, last) are closed
        if last <= self.next_bin:
            return np.zeros((0, self.n_channels), np.float32), np.zeros(0), bad
        ks = range(self.next_bin, last)
        bins = np.stack([self.pending.pop(k, np.zeros(self.n_channels, np.float32)) for k in ks])
        stamps = self.t0 + (np.arange(self.next_bin, last) + 1) * self.bin_s
        self.next_bin = last
        return bins, stamps, bad


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


MAX_RATE_HZ = 1000.0  # a channel's count above this rate is implausible (a 1-ms refractory period)


def max_count(seconds: float) -> int:
    """The most spikes one channel can plausibly fire in ``seconds`` (at least 1)."""
    return max(1, math.ceil(MAX_RATE_HZ * seconds - 1e-9))


def sanitize(x: np.ndarray, counts: bool, last: np.ndarray | None = None,
             most: float = np.inf) -> tuple[np.ndarray, int]:
    """Replace bad values so one bad sample cannot poison a window: non-finite ones, and for counts negative,
    fractional, or above ``most`` (a count no channel fires in one sample's time: see ``max_count``). Counts become
    0, behavior holds the last good value. Returns (clean array, number of samples that had a bad value)."""
    bad = ~np.isfinite(x)
    if counts:
        with np.errstate(invalid="ignore"):
            bad |= (x < 0) | (x > most) | (x != np.round(x))
    rows = bad.any(axis=1)
    if not rows.any():
        return x, 0
    x = x.copy()
    if counts:
        x[bad] = 0
    else:
        for i in np.flatnonzero(rows):
            prev = x[i - 1] if i > 0 else (last if last is not None else np.zeros(x.shape[1], x.dtype))
            x[i, bad[i]] = prev[bad[i]]
    return x, int(rows.sum())


class BlockCollector:
    """The first ``seconds`` of a stream's bins, gathered once and handed to ``on_block`` as (C, n) counts — the
    block a zero-label calibration of the session fits its read-in on (``alignnet serve --calibrate-seconds``)."""

    def __init__(self, seconds: float, on_block) -> None:
        self.seconds, self.on_block = float(seconds), on_block
        self.parts: list[np.ndarray] = []
        self.collected = 0  # bins in parts
        self.state = "collecting"
        self.error: str | None = None

    def add(self, bins: np.ndarray, engine, ring=None) -> None:
        """A bridge observer: ``bins`` (k, C) in arrival order, decoded by ``engine``."""
        if self.state != "collecting":
            return
        bin_s = engine.contract.bin_s
        self.parts.append(np.array(bins, np.float32))
        self.collected += len(bins)
        need = int(round(self.seconds / bin_s))
        if self.collected >= need:
            block = np.concatenate(self.parts)[:need].T
            self.parts, self.collected = [], 0
            try:
                self.on_block(block)
                self.state = "handed over"
            except Exception as e:  # a refused block (too short, busy) is reported, decoding goes on
                self.state, self.error = "failed", f"{type(e).__name__}: {e}"

    def status(self) -> dict:
        return {"state": self.state, "seconds": self.seconds, "error": self.error,
                "collected_bins": self.collected}
