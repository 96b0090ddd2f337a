"""How far a recording has drifted from what a model was trained on, measured in its latent space.

The gauge is the Wasserstein-2 (Fréchet) distance between Gaussian fits of two sets of latent vectors — the
training days' (``latent_reference`` in the artifact) and recent windows' — divided by the reference's total
variance, so 0 means "looks like training" and 1 means "as far as the spread of the training days itself". The
W2 distance between Gaussians is the measure behind FID; unlike a KL it stays finite when a covariance estimated
from a few windows is singular. The formula is written by hand; numpy's symmetric eigensolver takes the square
roots (both matrices are covariances), a seventh of the time of a general matrix square root on 64 dimensions, which
the live service pays once a second (``scripts/live_step_checks.py``).
"""

from __future__ import annotations

import numpy as np

# gauge above which recalibration is advised: chosen on simulated population 1 with its own model (the midpoint of
# the gap that best separates days a zero-label calibration helped from the others) and judged on population 0,
# the default model's (scripts/drift_threshold.py; docs/results.md, "A new recording day")
ADVISE_RECALIBRATION = 0.94


def gaussian_w2(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Squared Wasserstein-2 distance between N(mean_a, cov_a) and N(mean_b, cov_b)."""
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    # tr sqrt(A^1/2 B A^1/2): the matrix inside is symmetric PSD, so its root's trace is that of its eigenvalues'
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)))
    trace = np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(np.sum((mean_a - mean_b) ** 2) + max(trace, 0.0))


def drift_gauge(reference: dict, z: np.ndarray) -> float:
    """(N, D) latent vectors of recent windows against the artifact's ``latent_reference`` (N >= 2)."""
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"the drift gauge needs at least 2 latent vectors (N, D), got shape {z.shape}")
    mean, cov = np.asarray(reference["mean"]), np.asarray(reference["cov"])
    if z.shape[1] != mean.size:
        raise ValueError(f"latent vectors have {z.shape[1]} dimensions; the reference has {mean.size}")
    return gaussian_w2(mean, cov, z.mean(0), np.cov(z.T)) / max(float(np.trace(cov)), 1e-12)
