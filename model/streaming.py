"""What a live decoder computes, offline: the LSL bridge's ring buffer starts at zero, and every hop decodes the
window that ends at its last bin and keeps the last ``hop`` bins of the output. The one implementation used by
``alignnet evaluate`` (newest-bin R²), the replayer's offline check and scripts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def offline_twin(decode: Callable[[np.ndarray], np.ndarray], counts: np.ndarray, window: int, hop: int = 1,
                 batch: int = 256) -> np.ndarray:
    """(n, C) counts streamed from zero history -> (n', D) outputs for the first n' = n - n % hop bins.
    ``decode`` maps (B, C, window) counts to (B, D, window) outputs."""
    counts = np.asarray(counts, np.float32)
    padded = np.concatenate([np.zeros((window - 1, counts.shape[1]), np.float32), counts])
    ends = np.arange(hop - 1, len(counts) - len(counts) % hop, hop)  # last bin of each hop (in counts' index)
    if not len(ends):
        return np.zeros((0, 0), np.float32)
    # (n + window - 1, C) -> windows (n, C, window) as a strided view; each batch is copied once, by np.stack
    view = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)
    outs = [decode(np.ascontiguousarray(view[ends[i:i + batch]]))[:, :, -hop:] for i in range(0, len(ends), batch)]
    y = np.concatenate(outs)  # (hops, D, hop)
    return y.transpose(0, 2, 1).reshape(-1, y.shape[1])
