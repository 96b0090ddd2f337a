"""FALCON benchmark files (Karpowicz et al. 2024; NWB files from DANDI) read by FALCON's own loader
(``falcon_challenge.dataloaders.load_nwb``), so the bins we train on are the bins FALCON's evaluator serves.

``alignnet data import --format falcon-m2 FILES…`` (or -m1, -h1) makes a dataset of them: the decoding target
(finger velocity for M2, 7-D arm velocity for H1, EMG for M1) is the day's ``vel``; ``pos`` is its running sum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alignnet.recordings.checks import check_counts
from alignnet.recordings.dataset import DataError, Day

TASKS = ("m1", "m2", "h1")  # FALCON's per-bin regression tasks
BIN_S = 0.02


def load_falcon(path: str | Path, task) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(counts (n, C), target (n, D), trial_change (n,), eval_mask (n,)) of a FALCON file, or a DataError."""
    try:
        from falcon_challenge.config import FalconTask
        from falcon_challenge.dataloaders import load_nwb
    except ImportError as e:
        raise DataError(f"reading FALCON files needs the falcon-challenge package ({e}); see scripts/setup.sh") \
            from None
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    task = getattr(FalconTask, task) if isinstance(task, str) else task
    try:
        counts, target, trial_change, eval_mask = load_nwb(path, dataset=task)
    except Exception as e:  # h5py/hdmf/pandas raise many types for a file of another layout
        raise DataError(f"{path}: not a FALCON {task.name} file ({type(e).__name__}: {e})") from e
    target = np.asarray(target, np.float64)
    target = target[:, None] if target.ndim == 1 else target
    if len(target) != len(counts) or not np.all(np.isfinite(target)):
        raise DataError(f"{path}: {len(counts)} bins of spikes but {len(target)} of behavior, or non-finite behavior")
    return np.asarray(counts), target, np.asarray(trial_change, bool), np.asarray(eval_mask, bool)


def import_falcon(path: str | Path, task: str) -> Day:
    """A FALCON file -> a day of 20-ms bins: trials from FALCON's trial changes, the target as ``vel``."""
    from alignnet.recordings.importers import _integrate

    if task not in TASKS:
        raise DataError(f"FALCON task {task!r} is not a per-bin regression task; choose from {', '.join(TASKS)}")
    path = Path(path)
    counts, vel, trial_change, eval_mask = load_falcon(path, task)
    check_counts(counts, BIN_S, f"{path}: ")
    trial = np.cumsum(trial_change).astype(np.int64)
    segment_id = trial.copy()
    return Day(name=path.stem, bin_s=BIN_S, counts=counts.astype(np.int64),
               pos=_integrate(vel, BIN_S, segment_id).astype(np.float32), vel=vel.astype(np.float32),
               trial_id=trial, segment_id=segment_id, target=np.full(len(trial), -1, np.int64),
               time_s=np.arange(len(trial)) * BIN_S,
               extra={"derived_behavior": np.asarray(["pos"]), "falcon_eval_mask": eval_mask})
