"""Simulated 30-kHz broadband: spike waveforms in noise and a slow local field potential, for the spike-detection
path of the importers and its tests. Written by hand (a template sum); numpy/scipy do the numerics."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from alignnet.recordings.simulator import SPIKE_FS


def spike_template(fs: float = SPIKE_FS) -> tuple[np.ndarray, int]:
    """A biphasic extracellular waveform (trough then a smaller, slower peak), trough = -1.

    Returns (waveform, index of the trough)."""
    t = np.arange(-0.4e-3, 1.2e-3, 1.0 / fs)
    w = -np.exp(-0.5 * (t / 0.12e-3) ** 2) + 0.35 * np.exp(-0.5 * ((t - 0.45e-3) / 0.25e-3) ** 2)
    w = w / -w.min()
    return w, int(np.argmin(w))


def simulate_broadband(
    spike_samples: np.ndarray, spike_channels: np.ndarray, n_channels: int, n_samples: int, snr: float = 6.0,
    noise_uv: float = 10.0, seed: int = 0,
) -> np.ndarray:
    """(n_samples, C) float32 broadband at 30 kHz (µV): each spike is the template with trough amplitude
    ``snr * noise_uv``, in white noise of std ``noise_uv`` plus a slow local field potential."""
    rng = np.random.default_rng(seed)
    x = noise_uv * rng.standard_normal((n_samples, n_channels), dtype=np.float32)
    lfp = gaussian_filter1d(rng.standard_normal((n_samples // 30 + 2, n_channels)), 20, axis=0)
    lfp *= 5 * noise_uv / max(lfp.std(), 1e-12)
    x += np.repeat(lfp, 30, axis=0)[:n_samples].astype(np.float32)
    w, trough = spike_template()
    amp = np.float32(snr * noise_uv)
    for offset, value in enumerate(w):  # add the waveform sample by sample: vectorised over spikes
        idx = spike_samples - trough + offset
        ok = (idx >= 0) & (idx < n_samples)
        np.add.at(x, (idx[ok], spike_channels[ok]), amp * np.float32(value))
    return x
