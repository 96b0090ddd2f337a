"""The two metrics of the paper (§4), defined once for every model and protocol."""

from __future__ import annotations

import numpy as np


def _flatten(y: np.ndarray, feature_axis: int) -> np.ndarray:
    """Move the feature axis last and flatten the rest: (..., F) -> (n, F)."""
    y = np.moveaxis(np.asarray(y, dtype=np.float64), feature_axis, -1)
    return y.reshape(-1, y.shape[-1])


def r2(y_true: np.ndarray, y_pred: np.ndarray, feature_axis: int = -1) -> float:
    """Coefficient of determination over all held-out bins, per behavior variable, averaged over variables.

    Windows (N, D, T) use feature_axis=1; binned arrays (n, D) the default."""
    t, p = _flatten(y_true, feature_axis), _flatten(y_pred, feature_axis)
    if t.shape != p.shape:
        raise ValueError(f"shapes differ: true {t.shape}, predicted {p.shape}")
    ss_res = ((t - p) ** 2).sum(axis=0)
    ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    ok = ss_tot > 0
    if not ok.any():
        raise ValueError("R² is undefined: the true values do not vary")
    return float(np.mean(1.0 - ss_res[ok] / ss_tot[ok]))


def pearson(y_true: np.ndarray, y_pred: np.ndarray, feature_axis: int = -1) -> float:
    """Pearson r per channel over all held-out bins, averaged over channels where both series vary.

    Spike windows (N, C, T) use feature_axis=1."""
    t, p = _flatten(y_true, feature_axis), _flatten(y_pred, feature_axis)
    if t.shape != p.shape:
        raise ValueError(f"shapes differ: true {t.shape}, predicted {p.shape}")
    tc, pc = t - t.mean(axis=0), p - p.mean(axis=0)
    den = np.sqrt((tc**2).sum(axis=0) * (pc**2).sum(axis=0))
    ok = den > 1e-12
    if not ok.any():
        return 0.0
    return float(np.mean((tc[:, ok] * pc[:, ok]).sum(axis=0) / den[ok]))
