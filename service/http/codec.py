"""The one ``.npy`` codec of the service and its clients: arrays as NumPy ``.npy`` bodies, never pickles."""

from __future__ import annotations

import io
import math

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
    """``.npy`` bytes -> a numeric array. ValueError naming the problem for anything else: pickles, non-numbers,
    and a header whose shape does not match the bytes that follow (checked before anything is allocated, so a
    16-byte body cannot ask for gigabytes)."""
    f = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in reader:
            raise ValueError(f"format version {version[0]}.{version[1]} is not read here (send 1.0 or 2.0)")
        shape, _, dtype = reader[version](f)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"body is not a readable .npy array ({e})") from None
    if dtype.hasobject or dtype.kind not in "fiu":
        raise ValueError(f"the .npy array must hold numbers, got dtype {dtype}")
    declared, sent = math.prod(shape) * dtype.itemsize, len(body) - f.tell()
    if declared != sent:
        raise ValueError(f"the .npy header declares shape {shape} of {dtype} ({declared} bytes) but the body holds "
                         f"{sent} bytes")
    return np.load(io.BytesIO(body), allow_pickle=False)
