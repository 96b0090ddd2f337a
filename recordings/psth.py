"""Peri-stimulus time histograms: how simulated spikes are judged where single-trial counts cannot be.

Single 20-ms counts are Poisson-bound (a channel's true rate correlates with its own counts at r ~ 0.1-0.35), so a
B->S correlation against counts says little. A PSTH averages that noise away: per condition (target), time-locked
to movement onset, averaged over trials. ``psth_r`` compares two PSTHs channel by channel. On simulated data the
reference is the simulator's true rate; on real data the observed counts' own PSTH (whose trial noise then bounds
the score). Written by hand: a trial-aligned average is a few lines of numpy.
"""

from __future__ import annotations

import numpy as np

from alignnet.recordings.dataset import Day

BEFORE_S, AFTER_S = 0.2, 0.5  # the PSTH spans 200 ms before to 500 ms after movement onset


def movement_onsets(day: Day, threshold: float = 0.3) -> np.ndarray:
    """(n_trials,) bin of each trial's movement onset: its first bin whose speed reaches ``threshold`` of the
    trial's peak speed (-1 for a trial that does not move)."""
    speed = np.linalg.norm(day.vel, axis=1)
    onsets = []
    for t in np.unique(day.trial_id):
        idx = np.flatnonzero(day.trial_id == t)
        peak = speed[idx].max(initial=0.0)
        onsets.append(int(idx[np.argmax(speed[idx] >= threshold * peak)]) if peak > 0 else -1)
    return np.asarray(onsets, np.int64)


def psth(values: np.ndarray, day: Day, onsets: np.ndarray | None = None, trials: np.ndarray | None = None
         ) -> np.ndarray:
    """(G, T, C) trial-averaged ``values`` (n_bins, C; NaN where unknown) per target, from ``BEFORE_S`` before to
    ``AFTER_S`` after movement onset, inside each trial only (bins of the neighbouring trials count as unknown).

    ``trials`` limits the average to those trial ids; days without targets form one group."""
    onsets = movement_onsets(day) if onsets is None else onsets
    before, after = int(round(BEFORE_S / day.bin_s)), int(round(AFTER_S / day.bin_s))
    ids = np.unique(day.trial_id)
    use = np.ones(ids.size, bool) if trials is None else np.isin(ids, trials)
    target_of = {t: int(day.target[day.trial_id == t][0]) for t in ids}
    groups = sorted(set(target_of.values()))  # every target of the day: PSTHs of any trial subsets line up
    sums = np.zeros((len(groups), before + after, values.shape[1]))
    counts = np.zeros_like(sums)
    rel = np.arange(-before, after)
    for t, onset in zip(ids[use], onsets[use]):
        if onset < 0:
            continue
        idx = onset + rel
        ok = (idx >= 0) & (idx < day.n_bins)
        ok[ok] = day.trial_id[idx[ok]] == t
        v = values[idx[ok]]
        finite = np.isfinite(v)
        g = groups.index(target_of[t])
        sums[g, ok] += np.where(finite, v, 0.0)
        counts[g, ok] += finite
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def psth_r(reference: np.ndarray, other: np.ndarray) -> float:
    """Pearson r of two PSTHs (G, T, C), per channel over every (target, time) cell both know, averaged over the
    channels where both vary. 1 = the same shape of modulation for every channel (rates' scale does not count)."""
    a = reference.reshape(-1, reference.shape[-1])
    b = other.reshape(-1, other.shape[-1])
    ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    a, b = a[ok] - a[ok].mean(axis=0), b[ok] - b[ok].mean(axis=0)
    den = np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    vary = den > 1e-12
    return float(np.mean((a[:, vary] * b[:, vary]).sum(axis=0) / den[vary])) if vary.any() else float("nan")


def per_bin(windows: np.ndarray, starts: np.ndarray, n_bins: int) -> np.ndarray:
    """(n_bins, C) from windows (N, C, T) that start at ``starts``: each bin's value from the last window covering
    it, NaN where none does."""
    out = np.full((n_bins, windows.shape[1]), np.nan, np.float64)
    t = windows.shape[2]
    for w, s in zip(windows, starts):
        out[s:s + t] = w.T
    return out
