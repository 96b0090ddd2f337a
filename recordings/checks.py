"""Checks of what a lab hands us, before anything is computed: a manifest that is what it says, day files that are
.npz archives, spike counts that are counts. Each failure is a DataError naming the file and the problem (the CLI
prints it and exits 2)."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# The most spikes one channel may hold in one bin: 5,000 per second (a multi-unit electrode fires well below; a
# count beyond it is a unit mix-up, rates passed as counts, or a corrupt file), and at least 50 for very short bins.
MAX_RATE_HZ = 5000.0
MIN_COUNT_BOUND = 50


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent; the message names the file and what to do."""


def count_bound(bin_s: float) -> int:
    return max(MIN_COUNT_BOUND, math.ceil(MAX_RATE_HZ * bin_s))


def check_counts(counts: np.ndarray, bin_s: float, where: str) -> None:
    """Spike counts: numbers that are finite, non-negative, whole, and within ``count_bound``."""
    if counts.dtype.kind not in "biuf":
        raise DataError(f"{where}spike counts must be numbers, got dtype {counts.dtype}")
    if counts.dtype.kind == "f":
        if not np.all(np.isfinite(counts)):
            raise DataError(f"{where}spike counts must be finite (NaN or infinite values found)")
        fractional = counts != np.floor(counts)
        if fractional.any():
            raise DataError(f"{where}spike counts must be whole numbers: {int(fractional.sum())} values have "
                            f"fractions (e.g. {counts[fractional].flat[0]:g}); bin spike times into counts, do not "
                            "pass rates or smoothed traces")
    if counts.size and counts.min() < 0:
        raise DataError(f"{where}spike counts must be non-negative, found {counts.min():g}")
    bound = count_bound(bin_s)
    if counts.size and counts.max() > bound:
        raise DataError(f"{where}a bin holds {counts.max():g} spikes, more than the plausible {bound} for "
                        f"{bin_s * 1e3:g} ms bins ({MAX_RATE_HZ:g} spikes/s); check the units and the bin width")


def scalar_seconds(value: Any, where: str) -> float:
    """A bin width: one positive number of seconds, at most 10."""
    arr = np.asarray(value)
    if arr.shape != () or arr.dtype.kind not in "iuf":
        raise DataError(f"{where} must be one number of seconds, got {arr.dtype} of shape {arr.shape}")
    seconds = float(arr)
    if not (math.isfinite(seconds) and 0 < seconds <= 10):
        raise DataError(f"{where} must be in (0, 10] seconds, got {seconds:g}")
    return seconds


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz archive (no pickles), or a DataError saying why the file is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz archive (a zip of .npy arrays); is it another format, or truncated?")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from e


def check_manifest(manifest: dict[str, Any], root: Path, where: Path) -> None:
    """A dataset manifest's shape: a non-empty ``days`` list of {name, file} inside the dataset folder, and a
    ``contract`` the data contract accepts."""
    from alignnet.model.contract import DataContract

    days = manifest.get("days")
    if not isinstance(days, list) or not days:
        raise DataError(f"{where}: 'days' must be a non-empty list of {{name, file}} entries, got "
                        f"{type(days).__name__ if days is not None else 'nothing'}")
    top = root.resolve()
    for i, day in enumerate(days):
        if not isinstance(day, dict) or not isinstance(day.get("name"), str) or not isinstance(day.get("file"), str):
            raise DataError(f"{where}: day {i} must be an object with a 'name' and a 'file' (strings), got {day!r:.80}")
        target = (root / day["file"]).resolve()
        if top not in target.parents:
            raise DataError(f"{where}: day {day['name']!r} points outside the dataset folder ({day['file']!r}); "
                            "day files must lie inside it")
    names = [d["name"] for d in days]
    if len(set(names)) != len(names):
        raise DataError(f"{where}: day names must be unique, got {names}")
    contract = manifest.get("contract")
    if not isinstance(contract, dict):
        raise DataError(f"{where}: lacks its data 'contract' (an object with n_channels, bin_s, ...)")
    try:
        DataContract.from_dict(contract)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: invalid data contract ({e})") from None
