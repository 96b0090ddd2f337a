"""Preprocessing (paper §3.1): spike detection, binning, behavior interpolation and smoothing, windowing.

Filters, interpolation and smoothing are scipy/numpy; only the threshold-crossing bookkeeping (refractory period) is
a short loop written here, because no maintained library exposes it on its own.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import butter, sosfiltfilt

# A spike exactly on a bin edge can land a float ulp below it after t = sample / fs; this tolerance (far below any
# sampling period) puts it in the bin that starts there.
_EDGE_EPS = 1e-6


# ---- spike detection on broadband ------------------------------------------------------------------------------
def bandpass(x: np.ndarray, fs: float, low_hz: float = 300.0, high_hz: float = 6000.0, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth band-pass along axis 0 of (n_samples, C)."""
    if not 0 < low_hz < high_hz < fs / 2:
        raise ValueError(f"band-pass edges must satisfy 0 < low ({low_hz}) < high ({high_hz}) < fs/2 ({fs / 2})")
    sos = butter(order, [low_hz, high_hz], btype="bandpass", fs=fs, output="sos")
    return sosfiltfilt(sos, np.asarray(x, dtype=np.float64), axis=0)


def robust_noise(x: np.ndarray) -> np.ndarray:
    """Per-channel noise std from the median absolute value (Quiroga et al. 2004): median(|x|) / 0.6745."""
    return np.median(np.abs(x), axis=0) / 0.6745


def detect_spikes(
    broadband: np.ndarray,
    fs: float,
    threshold: float = 4.5,
    refractory_s: float = 1e-3,
    low_hz: float = 300.0,
    high_hz: float = 6000.0,
    polarity: str = "neg",
) -> list[np.ndarray]:
    """Threshold-crossing spike detection.

    broadband: (n_samples, C) voltage. Band-pass, estimate the noise robustly per channel, mark crossings of
    ``threshold`` x noise (negative-going by default), keep one crossing per refractory period.
    Returns one array of sample indices per channel."""
    x = np.asarray(broadband)
    if x.ndim != 2:
        raise ValueError(f"broadband must be (n_samples, channels), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("broadband contains NaN or infinite samples")
    if polarity not in ("neg", "pos", "both"):
        raise ValueError(f"polarity must be 'neg', 'pos' or 'both', got {polarity!r}")
    filt = bandpass(x, fs, low_hz, high_hz)
    sigma = robust_noise(filt)
    if polarity == "neg":
        score = -filt
    elif polarity == "pos":
        score = filt
    else:
        score = np.abs(filt)
    above = score > threshold * sigma[None, :]
    onset = above[1:] & ~above[:-1]
    dead = int(round(refractory_s * fs))
    out = []
    for c in range(x.shape[1]):
        crossings = np.flatnonzero(onset[:, c]) + 1
        kept = []
        last = -dead - 1
        for s in crossings:  # greedy refractory period
            if s - last > dead:
                kept.append(s)
                last = s
        out.append(np.asarray(kept, dtype=np.int64))
    return out


# ---- binning ---------------------------------------------------------------------------------------------------
def bin_spikes(
    times_s: np.ndarray, channels: np.ndarray, n_channels: int, t_start: float, n_bins: int, bin_s: float
) -> np.ndarray:
    """Counts per bin: (n_bins, n_channels) from spike times (s) and their channel; spikes outside are ignored."""
    times_s = np.asarray(times_s, dtype=np.float64)
    channels = np.asarray(channels, dtype=np.int64)
    if times_s.shape != channels.shape:
        raise ValueError(f"spike times {times_s.shape} and channels {channels.shape} differ in length")
    idx = np.floor((times_s - t_start) / bin_s + _EDGE_EPS).astype(np.int64)
    ok = (idx >= 0) & (idx < n_bins) & (channels >= 0) & (channels < n_channels)
    flat = np.bincount(idx[ok] * n_channels + channels[ok], minlength=n_bins * n_channels)
    return flat.reshape(n_bins, n_channels)


def bin_index(times_s: np.ndarray, t_start: float, bin_s: float) -> np.ndarray:
    """Index of the bin holding each time (same rule as bin_spikes)."""
    return np.floor((np.asarray(times_s, dtype=np.float64) - t_start) / bin_s + _EDGE_EPS).astype(np.int64)


# ---- behavior --------------------------------------------------------------------------------------------------
def interpolate_behavior(t_src: np.ndarray, x_src: np.ndarray, t_dst: np.ndarray) -> np.ndarray:
    """Linear interpolation (paper Eq. 1) of (n_src, D) behavior sampled at t_src onto t_dst -> (n_dst, D)."""
    x_src = np.asarray(x_src, dtype=np.float64)
    if x_src.ndim == 1:
        x_src = x_src[:, None]
    if x_src.shape[0] != len(t_src):
        raise ValueError(f"behavior has {x_src.shape[0]} samples but {len(t_src)} timestamps")
    if not np.all(np.isfinite(x_src)):
        raise ValueError("behavior contains NaN or infinite values")
    return np.stack([np.interp(t_dst, t_src, x_src[:, d]) for d in range(x_src.shape[1])], axis=1)


def segment_bounds(segment_id: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of equal segment ids."""
    segment_id = np.asarray(segment_id)
    if segment_id.size == 0:
        return []
    breaks = np.flatnonzero(segment_id[1:] != segment_id[:-1]) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [segment_id.size]])
    return list(zip(starts.tolist(), stops.tolist()))


def smooth_behavior(x: np.ndarray, sigma_bins: float, segment_id: np.ndarray | None = None) -> np.ndarray:
    """Gaussian smoothing (paper Eq. 3) of (n, D) along time, never across a segment boundary."""
    x = np.asarray(x, dtype=np.float64)
    if sigma_bins <= 0:
        return x.copy()
    if segment_id is None:
        return gaussian_filter1d(x, sigma_bins, axis=0, mode="nearest")
    out = np.empty_like(x)
    for a, b in segment_bounds(segment_id):
        out[a:b] = gaussian_filter1d(x[a:b], sigma_bins, axis=0, mode="nearest")
    return out


def velocity(pos: np.ndarray, bin_s: float, segment_id: np.ndarray | None = None) -> np.ndarray:
    """Finite-difference velocity of (n, D) positions, per segment."""
    pos = np.asarray(pos, dtype=np.float64)
    out = np.zeros_like(pos)
    bounds = segment_bounds(segment_id) if segment_id is not None else [(0, pos.shape[0])]
    for a, b in bounds:
        if b - a >= 2:
            out[a:b] = np.gradient(pos[a:b], bin_s, axis=0)
    return out


# ---- windows ---------------------------------------------------------------------------------------------------
def window_starts(segment_id: np.ndarray, window_bins: int, hop_bins: int, cross_segments: bool = False) -> np.ndarray:
    """Start bins of windows of ``window_bins`` every ``hop_bins`` that never span a segment boundary.

    With cross_segments=True the segments are treated as one (the caller concatenates movement periods on
    purpose)."""
    if window_bins < 1 or hop_bins < 1:
        raise ValueError(f"window_bins ({window_bins}) and hop_bins ({hop_bins}) must be >= 1")
    segment_id = np.asarray(segment_id)
    bounds = [(0, segment_id.size)] if cross_segments else segment_bounds(segment_id)
    starts = [np.arange(a, b - window_bins + 1, hop_bins) for a, b in bounds if b - a >= window_bins]
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)


def gather_windows(x: np.ndarray, starts: np.ndarray, window_bins: int) -> np.ndarray:
    """(n_bins, F) -> (N, F, window_bins) windows starting at ``starts`` (channels-first, as the model wants)."""
    idx = starts[:, None] + np.arange(window_bins)[None, :]
    return np.ascontiguousarray(np.asarray(x)[idx].transpose(0, 2, 1))
