"""The one ``.npy`` codec of the service and its clients: arrays as NumPy ``.npy`` bodies, never pickles."""

from __future__ import annotations

import io

import numpy as np

NPY = "application/x-npy"  # the media type of a .npy body


def to_npy(x: np.ndarray, dtype=np.float32) -> bytes:
    """A numeric array -> ``.npy`` bytes (as ``dtype``; None keeps the array's own). TypeError for non-numbers."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"expected a numeric array, got dtype {arr.dtype}")
    buf = io.BytesIO()
    np.save(buf, arr if dtype is None else arr.astype(dtype, copy=False), allow_pickle=False)
    return buf.getvalue()


def from_npy(body: bytes) -> np.ndarray:
    """``.npy`` bytes -> a numeric array. ValueError naming the problem for anything else (pickles included)."""
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"body is not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise ValueError(f"the .npy array must hold numbers, got dtype {getattr(arr, 'dtype', type(arr))}")
    return arr
