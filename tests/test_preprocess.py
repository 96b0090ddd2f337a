import numpy as np
import pytest
from scipy.interpolate import interp1d

from alignnet.recordings.broadband import simulate_broadband
from alignnet.recordings.preprocess import (
    bin_spikes,
    detect_spikes,
    gather_windows,
    interpolate_behavior,
    smooth_behavior,
    window_starts,
)
from alignnet.recordings.simulator import SPIKE_FS

SNR = 6.0  # spike trough / white-noise std of the raw broadband; detection is specified at this SNR


def _match(true: np.ndarray, found: np.ndarray, tol: int) -> int:
    """Number of true events with a detection within tol samples (each detection used once)."""
    j, hits = 0, 0
    found = np.sort(found)
    used = np.zeros(found.size, bool)
    for t in np.sort(true):
        j = np.searchsorted(found, t - tol)
        while j < found.size and found[j] <= t + tol:
            if not used[j]:
                used[j] = True
                hits += 1
                break
            j += 1
    return hits


def test_detection_recovers_injected_spikes(rng):
    n_ch, seconds = 4, 6.0
    n = int(seconds * SPIKE_FS)
    samples, chans = [], []
    for c in range(n_ch):  # 20 Hz Poisson trains with a 2-ms dead time
        isi = rng.exponential(1 / 20, 400) + 2e-3
        t = np.cumsum(isi)
        t = t[t < seconds - 0.01]
        samples.append((t * SPIKE_FS).astype(np.int64))
        chans.append(np.full(t.size, c))
    samples, chans = np.concatenate(samples), np.concatenate(chans)
    x = simulate_broadband(samples, chans, n_ch, n, snr=SNR, seed=1)
    found = detect_spikes(x, SPIKE_FS, threshold=4.5, refractory_s=1e-3)
    tol = int(0.5e-3 * SPIKE_FS)
    for c in range(n_ch):
        true = samples[chans == c]
        hits = _match(true, found[c], tol)
        recall, precision = hits / true.size, hits / max(found[c].size, 1)
        assert recall >= 0.9, f"channel {c}: recall {recall:.3f}"
        assert precision >= 0.9, f"channel {c}: precision {precision:.3f}"


def test_detection_finds_almost_nothing_in_noise():
    n = 10 * SPIKE_FS
    x = simulate_broadband(np.zeros(0, np.int64), np.zeros(0, np.int64), 4, n, seed=3)
    found = detect_spikes(x, SPIKE_FS)
    rates = [f.size / 10.0 for f in found]
    assert max(rates) < 0.5, f"false detections per second in pure noise: {rates}"


def test_detection_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        detect_spikes(np.full((3000, 2), np.nan), SPIKE_FS)
    with pytest.raises(ValueError, match="channels"):
        detect_spikes(np.zeros(3000), SPIKE_FS)


def test_binning_conserves_counts(rng):
    t = rng.uniform(0, 10, 5000)
    c = rng.integers(0, 8, 5000)
    counts = bin_spikes(t, c, 8, 0.0, 500, 0.02)
    assert counts.shape == (500, 8)
    assert counts.sum() == 5000
    np.testing.assert_array_equal(counts.sum(0), np.bincount(c, minlength=8))
    # spikes on bin edges go to the bin that starts there, even after float rounding of sample / fs
    edge = np.arange(1, 100) * 600 / SPIKE_FS
    assert np.all(bin_spikes(edge, np.zeros(99, int), 1, 0.0, 101, 0.02)[1:100, 0] == 1)


def test_interpolation_matches_scipy(rng):
    t_src = np.sort(rng.uniform(0, 5, 400))
    x = rng.standard_normal((400, 2))
    t_dst = np.linspace(t_src[0], t_src[-1], 250)
    ref = interp1d(t_src, x, axis=0, kind="linear")(t_dst)
    np.testing.assert_allclose(interpolate_behavior(t_src, x, t_dst), ref, atol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        interpolate_behavior(t_src, np.where(t_src[:, None] > 2, np.nan, x), t_dst)


def test_smoothing_matches_explicit_gaussian_kernel_and_respects_segments(rng):
    x = rng.standard_normal((300, 2))
    sigma = 2.5
    radius = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    seg = np.repeat([0, 1], 150)
    out = smooth_behavior(x, sigma, seg)
    for a, b in ((0, 150), (150, 300)):
        padded = np.pad(x[a:b], ((radius, radius), (0, 0)), mode="edge")
        ref = np.stack([np.convolve(padded[:, d], k, mode="valid") for d in range(2)], axis=1)
        np.testing.assert_allclose(out[a:b], ref, atol=1e-10)


def test_windows_never_span_a_gap():
    seg = np.repeat([0, 1, 2, 3], [130, 99, 250, 100])
    starts = window_starts(seg, 100, 7)
    assert starts.size > 0
    win = gather_windows(seg[:, None], starts, 100)[:, 0, :]
    assert np.all(win == win[:, :1]), "a window spans two segments"
    assert not np.any(seg[starts] == 1), "a 99-bin segment cannot hold a 100-bin window"
    # all windows of each long-enough segment are there
    assert starts.size == len(range(0, 31, 7)) + len(range(229, 380, 7)) + 1
    # concatenating on purpose is possible, and then windows do cross
    assert window_starts(seg, 100, 7, cross_segments=True).size == len(range(0, 480, 7))
