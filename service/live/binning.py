"""The most spikes a channel can plausibly fire, and the block a session's zero-label calibration is fitted on (pure
numpy, tested without LSL). Re-binning and the clean-up of bad samples are on the sample's path, in ``sources.py``;
the stream's window ring in ``pipeline.py``.

Written here because no maintained library does these few lines for a live stream.
"""

from __future__ import annotations

import math

import numpy as np

MAX_RATE_HZ = 1000.0  # a channel's count above this rate is implausible (a 1-ms refractory period)


def max_count(seconds: float) -> int:
    """The most spikes one channel can plausibly fire in ``seconds`` (at least 1)."""
    return max(1, math.ceil(MAX_RATE_HZ * seconds - 1e-9))


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
