"""Small synthetic recordings in the binned ``.npz`` layout a lab would hand us, in the shapes that broke the
pipeline before (bring-your-own-recording issue): a continuous session without trials, one day, 100-ms bins with
5-bin trials, velocity only, units that differ by day, 30 / 95 / 190 channels.

Units are Poisson with log-linear velocity tuning (a preferred direction, a depth and a baseline each), driven by a
smooth 2-D velocity: center-out reaches in trials, or an Ornstein-Uhlenbeck wander for a continuous session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WIENER = """
model: wiener
model_config: {}
train: {val_fraction: 0.1, days: all, seed: 0, device: cpu}
finetune: {}
evaluate:
  models: {}
"""  # a training config for the Wiener filter: trains in seconds


def velocity_trials(rng, n_trials: int, trial_bins: int, bin_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Center-out reaches: a bell-shaped speed profile toward one of 8 targets per trial."""
    t = np.linspace(0, 1, trial_bins)
    profile = np.sin(np.pi * t) ** 2
    target = rng.integers(0, 8, n_trials)
    ang = target * np.pi / 4
    vel = np.concatenate([profile[:, None] * np.c_[np.cos(a), np.sin(a)] for a in ang]) * 20.0
    vel += rng.normal(0, 1.0, vel.shape)
    trial = np.repeat(np.arange(n_trials), trial_bins)
    return vel, trial, np.repeat(target, trial_bins)


def velocity_continuous(rng, n_bins: int, bin_s: float, tau_s: float = 0.5) -> np.ndarray:
    """An Ornstein-Uhlenbeck wander of the hand (cm/s)."""
    a = np.exp(-bin_s / tau_s)
    noise = rng.normal(0, 15.0 * np.sqrt(1 - a * a), (n_bins, 2))
    vel = np.zeros((n_bins, 2))
    for k in range(1, n_bins):
        vel[k] = a * vel[k - 1] + noise[k]
    return vel


def spikes(rng, vel: np.ndarray, n_units: int, bin_s: float, pd: np.ndarray | None = None) -> np.ndarray:
    """Poisson counts of units tuned to velocity (rate in Hz = exp(baseline + depth * cos(angle - pd) * speed))."""
    pd = rng.uniform(0, 2 * np.pi, n_units) if pd is None else pd
    base = rng.uniform(np.log(5), np.log(30), n_units)
    depth = rng.uniform(0.02, 0.06, n_units)
    drive = vel @ np.stack([np.cos(pd), np.sin(pd)])  # (bins, units)
    rate = np.exp(base + depth * np.clip(drive, -40, 40))
    return rng.poisson(rate * bin_s).astype(np.uint8 if rate.max() * bin_s < 50 else np.uint16)


def write(path: Path, counts: np.ndarray, vel: np.ndarray, bin_s: float, *, trial: np.ndarray | None = None,
          target: np.ndarray | None = None, pos: bool = True, vel_key: bool = True) -> Path:
    """The binned layout; keys a lab may not have are left out (trial_id, timestep, target, pos or vel)."""
    arrays = {"spike_counts": counts, "bin_size_s": np.float32(bin_s)}
    if vel_key:
        arrays["vel"] = vel.astype(np.float32)
    trial_of = np.zeros(len(vel), np.int64) if trial is None else trial
    start = np.r_[0, np.flatnonzero(np.diff(trial_of)) + 1]
    lengths = np.diff(np.r_[start, len(vel)])
    if pos:  # from the center at each trial's start (a continuous session: one wander)
        p = np.cumsum(vel * bin_s, axis=0)
        arrays["pos"] = (p - np.repeat(p[start] - vel[start] * bin_s, lengths, axis=0)).astype(np.float32)
    if trial is not None:
        arrays["trial_id"] = trial.astype(np.int32)
        arrays["timestep"] = (np.arange(len(trial)) - np.repeat(start, lengths)).astype(np.int32)
    if target is not None:
        arrays["target"] = target.astype(np.int8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def make(shape: str, folder: Path, seed: int = 0) -> tuple[list[Path], str]:
    """Write the files of one shape into ``folder``; returns (files, behavior kind to import)."""
    rng = np.random.default_rng(seed)
    if shape == "continuous":  # one ~10-min session, 50-ms bins, no trial structure, 95 channels
        vel = velocity_continuous(rng, 12_000, 0.05)
        return [write(folder / "session.npz", spikes(rng, vel, 95, 0.05), vel, 0.05)], "vel"
    if shape == "one-day":  # one day of trials, 20-ms bins, 30 channels
        vel, trial, target = velocity_trials(rng, 120, 60, 0.02)
        return [write(folder / "day1.npz", spikes(rng, vel, 30, 0.02), vel, 0.02, trial=trial, target=target)], "pos"
    if shape == "short-trials":  # 100-ms bins, 5-bin trials, 95 channels, two matched days
        pd = rng.uniform(0, 2 * np.pi, 95)
        files = []
        for k in range(2):
            vel, trial, target = velocity_trials(rng, 200, 5, 0.1)
            files.append(write(folder / f"d{k}.npz", spikes(rng, vel, 95, 0.1, pd), vel, 0.1, trial=trial,
                               target=target))
        return files, "vel"
    if shape == "velocity-only":  # no pos at all, 50-ms bins, 190 channels
        vel, trial, target = velocity_trials(rng, 120, 30, 0.05)
        return [write(folder / "vonly.npz", spikes(rng, vel, 190, 0.05), vel, 0.05, trial=trial, target=target,
                      pos=False)], "vel"
    if shape == "unmatched":  # two days of sorted units that differ (40 vs 34), 100-ms bins, short trials
        pd = rng.uniform(0, 2 * np.pi, 48)
        files = []
        for k, keep in enumerate((np.arange(40), np.r_[0:20, 26:40])):
            vel, trial, target = velocity_trials(rng, 200, 6, 0.1)
            files.append(write(folder / f"u{k}.npz", spikes(rng, vel, len(keep), 0.1, pd[keep]), vel, 0.1,
                               trial=trial, target=target))
        return files, "vel"
    raise ValueError(f"unknown shape {shape!r}")


SHAPES = ("continuous", "one-day", "short-trials", "velocity-only", "unmatched")
