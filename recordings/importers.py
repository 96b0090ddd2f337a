"""Turn recordings into canonical days: simulated days, NWB files, the binned NumPy layout of the real recordings,
and raw broadband arrays. Every path ends in ``bin_day`` so the same spikes give the same counts whatever the route.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from alignnet.recordings.checks import check_counts, read_npz, scalar_seconds
from alignnet.recordings.dataset import DataError, Day
from alignnet.recordings.preprocess import (
    bin_index,
    bin_spikes,
    detect_spikes,
    interpolate_behavior,
    segment_bounds,
    smooth_behavior,
    velocity,
)
from alignnet.recordings.simulator import BEHAVIOR_FS, SimDay

log = logging.getLogger(__name__)


def bin_day(
    name: str,
    spike_times_s: np.ndarray,
    spike_channels: np.ndarray,
    n_channels: int,
    behavior_t: np.ndarray,
    behavior: np.ndarray,
    trial_start_s: np.ndarray,
    trial_stop_s: np.ndarray,
    trial_target: np.ndarray | None,
    bin_s: float,
    smooth_s: float,
    source: str,
    extra: dict[str, np.ndarray] | None = None,
) -> Day:
    """Spike times + behavior + trials -> a Day on a bin grid starting at the first trial.

    Bins whose start lies outside every trial are dropped; a gap between kept bins starts a new segment.
    Behavior is linearly interpolated onto bin centres, then Gaussian-smoothed within each segment."""
    behavior = np.asarray(behavior, dtype=np.float64)
    behavior_t = np.asarray(behavior_t, dtype=np.float64)
    if behavior.ndim != 2 or behavior.shape[0] != behavior_t.shape[0]:
        raise DataError(
            f"{source}: behavior has shape {behavior.shape} but {behavior_t.shape[0]} timestamps: "
            "behavior samples and timestamps must match"
        )
    if not np.all(np.isfinite(behavior)):
        bad = int((~np.isfinite(behavior)).any(axis=1).sum())
        raise DataError(f"{source}: behavior has NaN or infinite values in {bad} samples")
    trial_start_s, trial_stop_s = np.asarray(trial_start_s, float), np.asarray(trial_stop_s, float)
    if trial_start_s.size == 0:
        raise DataError(f"{source}: no trials")
    t0 = float(trial_start_s.min())
    t_end = float(trial_stop_s.max())
    if behavior_t[0] > t0 + bin_s or behavior_t[-1] < t_end - bin_s:
        raise DataError(
            f"{source}: behavior covers {behavior_t[0]:.3f}-{behavior_t[-1]:.3f} s but trials span "
            f"{t0:.3f}-{t_end:.3f} s: spikes and behavior have different lengths"
        )
    n_all = int(np.floor((t_end - t0) / bin_s + 1e-6))
    starts = t0 + np.arange(n_all) * bin_s
    # trial holding each bin start
    trial_of_bin = np.full(n_all, -1, np.int64)
    first = np.clip(bin_index(trial_start_s, t0, bin_s), 0, n_all)
    last = np.clip(bin_index(trial_stop_s, t0, bin_s), 0, n_all)
    for k, (a, b) in enumerate(zip(first, last)):
        trial_of_bin[a:b] = k
    keep = trial_of_bin >= 0
    counts_all = bin_spikes(spike_times_s, spike_channels, n_channels, t0, n_all, bin_s)
    kept = np.flatnonzero(keep)
    segment_id = np.concatenate([[0], np.cumsum(np.diff(kept) > 1)]) if kept.size else np.zeros(0, int)
    pos = interpolate_behavior(behavior_t, behavior, starts[kept] + bin_s / 2)
    pos = smooth_behavior(pos, smooth_s / bin_s, segment_id)
    tr = trial_of_bin[kept]
    target = np.asarray(trial_target)[tr] if trial_target is not None else np.full(kept.size, -1)
    return Day(
        name=name, bin_s=float(bin_s), counts=counts_all[kept], pos=pos.astype(np.float32),
        vel=velocity(pos, bin_s, segment_id).astype(np.float32), trial_id=tr, segment_id=segment_id,
        target=target.astype(np.int64), time_s=starts[kept], extra=extra or {},
    )


# ---- simulated days -------------------------------------------------------------------------------------------
def simday_trials(sd: SimDay) -> tuple[np.ndarray, np.ndarray]:
    start = sd.trial_start_ms / BEHAVIOR_FS
    stop = np.append(sd.trial_start_ms[1:], sd.behavior.shape[0]) / BEHAVIOR_FS
    return start, stop


def simday_truth(sd: SimDay) -> dict[str, np.ndarray]:
    p = sd.population
    return {
        "truth_active": p.active, "truth_baseline": p.baseline, "truth_depth": p.depth, "truth_pd": p.pd,
        "truth_shift": np.float64(p.shift), "truth_shift_y": np.float64(p.shift_y),
        "truth_channel_pd": p.channel_pd(),
    }


def simday_to_day(sd: SimDay, bin_s: float, smooth_s: float) -> Day:
    start, stop = simday_trials(sd)
    t = np.arange(sd.behavior.shape[0]) / BEHAVIOR_FS
    day = bin_day(
        f"day{sd.index:03d}", sd.spike_times_s(), sd.spike_channels, sd.n_channels, t, sd.behavior,
        start, stop, sd.target, bin_s, smooth_s, source=f"simulated day {sd.index}", extra=simday_truth(sd),
    )
    if sd.rates_hz is not None:
        # the expected count of every bin: the true rate summed over the bin's milliseconds (reduceat over
        # [start, end) pairs: no copy of the day's 1-ms rates, which are ~1 GB a day at paper scale)
        n = len(sd.rates_hz)
        first = np.clip(np.round(day.time_s * BEHAVIOR_FS).astype(np.int64), 0, n - 1)
        last = np.clip(first + int(round(bin_s * BEHAVIOR_FS)), 1, n)
        edges = np.stack([first, last], axis=1).ravel()
        sums = np.add.reduceat(sd.rates_hz, edges[:-1] if edges[-1] == n else edges, axis=0, dtype=np.float64)
        day.extra["truth_rate"] = (sums[0::2] / BEHAVIOR_FS).astype(np.float32)
    return day


# ---- the binned NumPy layout of ../shared/data/real ------------------------------------------------------------
BINNED_REQUIRED = ("spike_counts", "bin_size_s")  # plus pos or vel; trial_id, timestep, target are optional


def import_binned_npz(path: str | Path, smooth_s: float = 0.0) -> Day:
    """A day in the binned layout of the real recordings (see ../shared/data/real/README.md).

    Needed: ``spike_counts`` (bins, units), ``bin_size_s`` and ``pos`` or ``vel`` (bins, D). Optional: ``trial_id``
    (without it the file is one continuous session, split by time downstream), ``timestep`` (bin index inside its
    trial; without it bins of a trial are consecutive), ``target``. The missing one of pos / vel is derived: vel by
    finite differences of pos, pos by integrating vel (from 0 at each segment's start). A segment is a run of
    consecutive timesteps inside one trial (the 'moving' files keep only bins with speed > 5, so a trial can hold
    several segments). Behavior is used as given unless smooth_s > 0.
    """
    path = Path(path)
    z = read_npz(path)
    missing = [k for k in BINNED_REQUIRED if k not in z] + ([] if "pos" in z or "vel" in z else ["pos or vel"])
    if missing:
        raise DataError(f"{path}: not in the binned layout: lacks {', '.join(missing)}")
    counts = z["spike_counts"]
    if counts.ndim != 2 or counts.shape[0] == 0 or counts.shape[1] == 0:
        raise DataError(f"{path}: spike_counts must be (bins, units) with at least one of each, got {counts.shape}")
    n = counts.shape[0]
    for k in ("pos", "vel", "trial_id", "timestep", "target"):
        if k in z and z[k].shape[0] != n:
            raise DataError(f"{path}: spike_counts has {n} bins but {k} has {z[k].shape[0]}")
    for k in ("pos", "vel"):
        if k in z and (z[k].ndim != 2 or not np.all(np.isfinite(z[k]))):
            raise DataError(f"{path}: {k} must be (bins, dims) of finite values, got shape {z[k].shape}")
    bin_s = scalar_seconds(z["bin_size_s"], f"{path}: bin_size_s")
    check_counts(counts, bin_s, f"{path}: ")  # before the cast to integers, which would truncate fractions
    trial = z["trial_id"].astype(np.int64) if "trial_id" in z else np.zeros(n, np.int64)
    step = z["timestep"].astype(np.int64) if "timestep" in z else _steps_in_trials(trial)
    new_seg = np.ones(n, bool)
    new_seg[1:] = (trial[1:] != trial[:-1]) | (step[1:] != step[:-1] + 1)
    segment_id = np.cumsum(new_seg) - 1
    pos = z["pos"] if "pos" in z else _integrate(z["vel"], bin_s, segment_id)
    vel = z["vel"] if "vel" in z else velocity(pos, bin_s, segment_id)
    if smooth_s > 0:
        pos, vel = (smooth_behavior(b, smooth_s / bin_s, segment_id) for b in (pos, vel))
    # a global time axis for plotting and streaming: trial blocks laid end to end, one bin apart
    time_s = np.arange(n) * bin_s
    derived = [k for k in ("pos", "vel") if k not in z]
    return Day(
        name=path.stem, bin_s=bin_s, counts=counts.astype(np.int64), pos=np.asarray(pos, np.float32),
        vel=np.asarray(vel, np.float32), trial_id=trial, segment_id=segment_id,
        target=z["target"].astype(np.int64) if "target" in z else np.full(n, -1, np.int64), time_s=time_s,
        extra={"derived_behavior": np.asarray(derived, dtype=str)} if derived else {},
    )


def _steps_in_trials(trial: np.ndarray) -> np.ndarray:
    """Bin index inside its trial, for files without ``timestep`` (each trial's bins consecutive)."""
    steps = np.zeros(trial.size, np.int64)
    for a, b in segment_bounds(trial):
        steps[a:b] = np.arange(b - a)
    return steps


def _integrate(vel: np.ndarray, bin_s: float, segment_id: np.ndarray) -> np.ndarray:
    """Position from velocity: the running sum of vel * bin_s, restarted (from 0) at each segment's start."""
    pos = np.zeros(vel.shape, np.float64)
    for a, b in segment_bounds(segment_id):
        pos[a:b] = np.cumsum(vel[a:b].astype(np.float64) * bin_s, axis=0)
    return pos


# ---- raw broadband ---------------------------------------------------------------------------------------------
def import_broadband(
    path: str | Path, bin_s: float, smooth_s: float, threshold: float = 4.5, refractory_s: float = 1e-3,
    n_channels: int | None = None,
) -> Day:
    """An .npz with ``broadband`` (n_samples, C) volts, ``fs``, ``behavior`` (m, D), ``behavior_fs`` and optionally
    ``trial_start_s``/``trial_stop_s``/``target``: threshold-crossing detection, then binning."""
    path = Path(path)
    z = read_npz(path)
    missing = [k for k in ("broadband", "fs", "behavior", "behavior_fs") if k not in z]
    if missing:
        raise DataError(f"{path}: a broadband archive needs {', '.join(missing)}")
    x, fs = z["broadband"], float(z["fs"])
    if x.ndim != 2:
        raise DataError(f"{path}: broadband must be (samples, channels), got shape {x.shape}")
    if n_channels is not None and x.shape[1] != n_channels:
        raise DataError(f"{path}: broadband has {x.shape[1]} channels, expected {n_channels}")
    try:
        spikes = detect_spikes(x, fs, threshold=threshold, refractory_s=refractory_s)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from e
    times = np.concatenate([s / fs for s in spikes])
    chans = np.concatenate([np.full(s.size, c) for c, s in enumerate(spikes)])
    beh = z["behavior"]
    beh = beh[:, None] if beh.ndim == 1 else beh
    bt = np.arange(beh.shape[0]) / float(z["behavior_fs"])
    duration = x.shape[0] / fs
    start = z.get("trial_start_s", np.array([0.0]))
    stop = z.get("trial_stop_s", np.append(start[1:], duration))
    return bin_day(path.stem, times, chans, x.shape[1], bt, beh, start, stop, z.get("target"), bin_s, smooth_s,
                   source=str(path))


# ---- NWB -------------------------------------------------------------------------------------------------------
def export_nwb(sd: SimDay, path: str | Path, subject: str = "sim-monkey") -> None:
    """Write a simulated day as NWB: Units (one multi-unit per channel), joystick SpatialSeries, trials table."""
    import datetime

    from pynwb import NWBFile
    from pynwb.behavior import Position
    from pynwb.file import Subject

    nwb = NWBFile(
        session_description=f"AlignNet-BCI simulated center-out session, day {sd.index}",
        identifier=f"{subject}-day{sd.index:03d}",
        session_start_time=datetime.datetime(2025, 4, 1, tzinfo=datetime.timezone.utc)
        + datetime.timedelta(days=sd.index),
        subject=Subject(subject_id=subject, species="Macaca mulatta"),
    )
    module = nwb.create_processing_module("behavior", "joystick position")
    position = Position(name="Position")
    position.create_spatial_series(
        name="joystick", data=sd.behavior.astype(np.float64), reference_frame="center of the workspace",
        rate=float(BEHAVIOR_FS), starting_time=0.0, unit="joystick units",
    )
    module.add(position)
    times = sd.spike_times_s()
    bounds = np.searchsorted(sd.spike_channels, np.arange(sd.n_channels + 1))
    for c in range(sd.n_channels):
        nwb.add_unit(spike_times=times[bounds[c]:bounds[c + 1]])
    nwb.add_trial_column("target", "index of the center-out target (0-7)")
    nwb.add_trial_column("target_onset", "time of target onset (s)")
    start, stop = simday_trials(sd)
    for k in range(sd.n_trials):
        nwb.add_trial(start_time=float(start[k]), stop_time=float(stop[k]), target=int(sd.target[k]),
                      target_onset=float(sd.target_onset_ms[k] / BEHAVIOR_FS))
    write_nwb(nwb, path)


def write_nwb(nwb: Any, path: str | Path) -> Path:
    """Write an NWBFile through a temporary file beside ``path`` and rename it into place: a reader never sees half
    a file, and an interrupted write leaves the old one."""
    from pynwb import NWBHDF5IO

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    with NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwb)
    tmp.replace(path)
    return path


def import_nwb(
    path: str | Path, bin_s: float, smooth_s: float, behavior_name: str | None = None,
    name: str | None = None,
) -> Day:
    """An NWB file: spikes from the Units table (or a threshold-crossing TimeSeries of counts), behavior from a
    SpatialSeries/TimeSeries (``behavior_name`` picks one when there are several), trials from the trials table."""
    from pynwb import NWBHDF5IO

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        io = NWBHDF5IO(str(path), "r")
        nwb = io.read()
    except Exception as e:  # h5py/hdmf raise many types for a corrupt file
        raise DataError(f"{path}: not a readable NWB file ({type(e).__name__}: {e})") from e
    try:
        times, chans, n_channels = _nwb_spikes(nwb, path)
        bt, beh = _nwb_behavior(nwb, path, behavior_name)
        if nwb.trials is not None and len(nwb.trials) > 0:
            tr = nwb.trials.to_dataframe()
            start, stop = tr["start_time"].to_numpy(), tr["stop_time"].to_numpy()
            target = tr["target"].to_numpy() if "target" in tr else None
        else:
            start, stop, target = np.array([bt[0]]), np.array([bt[-1]]), None
        return bin_day(name or path.stem, times, chans, n_channels, bt, beh, start, stop, target, bin_s,
                       smooth_s, source=str(path))
    finally:
        io.close()


def _nwb_spikes(nwb: Any, path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    if nwb.units is not None and len(nwb.units) > 0:
        st = nwb.units["spike_times"]
        per_unit = [np.asarray(st[i]) for i in range(len(nwb.units))]
        times = np.concatenate(per_unit) if per_unit else np.zeros(0)
        chans = np.concatenate([np.full(len(s), i) for i, s in enumerate(per_unit)])
        return times, chans, len(per_unit)
    # threshold crossings stored as counts in a TimeSeries (e.g. 'threshold_crossings' or 'spikes')
    from pynwb import TimeSeries

    for obj in nwb.objects.values():
        if isinstance(obj, TimeSeries) and any(k in obj.name.lower() for k in ("threshold", "crossing", "spike")):
            data = np.asarray(obj.data[:])
            if data.ndim != 2:
                continue
            t = obj.timestamps[:] if obj.timestamps is not None else obj.starting_time + np.arange(
                data.shape[0]) / obj.rate
            ti, ci = np.nonzero(data)
            reps = data[ti, ci].astype(np.int64)
            return np.repeat(np.asarray(t)[ti], reps), np.repeat(ci, reps), data.shape[1]
    raise DataError(f"{path}: NWB file has no units (no Units table and no threshold-crossing TimeSeries)")


def _nwb_behavior(nwb: Any, path: Path, behavior_name: str | None) -> tuple[np.ndarray, np.ndarray]:
    from pynwb import TimeSeries
    from pynwb.behavior import SpatialSeries

    candidates = [o for o in nwb.objects.values() if isinstance(o, SpatialSeries)]
    if behavior_name:
        candidates = [o for o in nwb.objects.values() if isinstance(o, TimeSeries) and o.name == behavior_name]
        if not candidates:
            raise DataError(f"{path}: no TimeSeries named {behavior_name!r}")
    if not candidates:
        raise DataError(f"{path}: NWB file has no behavior (no SpatialSeries; name a TimeSeries with --behavior-name)")
    if len(candidates) > 1:
        names = ", ".join(sorted(o.name for o in candidates))
        raise DataError(f"{path}: several behavior series ({names}); pick one with --behavior-name")
    ts = candidates[0]
    data = np.asarray(ts.data[:], dtype=np.float64)
    data = data[:, None] if data.ndim == 1 else data
    t = np.asarray(ts.timestamps[:]) if ts.timestamps is not None else ts.starting_time + np.arange(
        data.shape[0]) / ts.rate
    return t, data
