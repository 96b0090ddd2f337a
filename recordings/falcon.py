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


def m2_name(date: str, run: int, part: str) -> str:
    """A FALCON M2 file name (DANDI style) that FALCON's ``hash_dataset`` maps to ``Run<run>_<date without ->``;
    ``part`` is e.g. 'held-in-calib', 'held-in-minival', 'held-out-calib'."""
    return f"sub-MonkeyN-{part}_ses-{date}-Run{run}_behavior+ecephys.nwb"


def write_falcon_m2(path: str | Path, counts: np.ndarray, vel: np.ndarray, trial: np.ndarray,
                    eval_mask: np.ndarray | None = None, bin_s: float = BIN_S) -> Path:
    """Binned counts (n, C), finger velocity (n, 2) and trial ids (n,) as a FALCON M2 NWB file, the layout
    ``falcon_challenge.dataloaders.load_nwb`` reads: a Units table (each bin's spikes at its middle), the velocities
    in a BehavioralTimeSeries 'finger_vel' stamped at bin starts, an 'eval_mask' series and a trials table. For
    synthetic sessions (tests, benchmarks) and for putting a lab's own sessions in front of FALCON's evaluator."""
    from datetime import datetime, timezone

    from pynwb import NWBFile, TimeSeries
    from pynwb.behavior import BehavioralTimeSeries

    from alignnet.recordings.importers import write_nwb

    path, counts = Path(path), np.asarray(counts)
    if vel.shape != (len(counts), 2) or len(trial) != len(counts):
        raise DataError(f"FALCON M2 needs (n, C) counts, (n, 2) velocity and (n,) trials; got {counts.shape}, "
                        f"{vel.shape}, {np.shape(trial)}")
    t = 100.0 + np.arange(len(vel)) * bin_s
    nwb = NWBFile(session_description="FALCON M2 layout, written by alignnet", identifier=path.stem,
                  session_start_time=datetime(2020, 10, 19, tzinfo=timezone.utc))
    for u in range(counts.shape[1]):
        nwb.add_unit(spike_times=np.repeat(t + bin_s / 2, counts[:, u].astype(np.int64)))
    fv = BehavioralTimeSeries(name="finger_vel")
    for j, name in enumerate(("index_velocity", "mrs_velocity")):
        fv.create_timeseries(name=name, data=np.asarray(vel[:, j], np.float64), timestamps=t, unit="a.u.")
    nwb.add_acquisition(fv)
    mask = np.ones(len(t), bool) if eval_mask is None else np.asarray(eval_mask, bool)
    nwb.add_acquisition(TimeSeries(name="eval_mask", data=mask, timestamps=t, unit="n/a"))
    starts = np.r_[0, np.flatnonzero(np.diff(trial)) + 1]
    for a, b in zip(starts, np.r_[starts[1:], len(t)]):
        nwb.add_trial(start_time=t[a], stop_time=t[b - 1] + bin_s)
    return write_nwb(nwb, path)
