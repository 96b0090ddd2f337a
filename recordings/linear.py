"""Linear decoders on lagged spike counts (the Wiener filter of the field), fitted with scikit-learn.

Used for quick data checks (``alignnet data info``) and as the reference a deep decoder must beat."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold

from alignnet.model.metrics import r2
from alignnet.recordings.preprocess import segment_bounds

RIDGE_ALPHAS = np.logspace(-1, 4, 11)


def lagged_features(counts: np.ndarray, n_lags: int, segment_id: np.ndarray | None = None) -> np.ndarray:
    """(n, C) counts -> (n, C * (n_lags + 1)) features [x_t, x_{t-1}, ..., x_{t-n_lags}] (causal history).

    History never reaches across a segment boundary: missing lags are zero."""
    x = np.asarray(counts, dtype=np.float32)
    n, c = x.shape
    out = np.zeros((n, c * (n_lags + 1)), np.float32)
    bounds = segment_bounds(segment_id) if segment_id is not None else [(0, n)]
    for a, b in bounds:
        for lag in range(n_lags + 1):
            if b - a > lag:
                out[a + lag:b, lag * c:(lag + 1) * c] = x[a:b - lag]
    return out


def fit_ridge(x: np.ndarray, y: np.ndarray) -> RidgeCV:
    """Ridge on log1p features, its penalty chosen on the training data only (efficient leave-one-out)."""
    return RidgeCV(alphas=RIDGE_ALPHAS).fit(np.log1p(x), y)


def predict_ridge(model: RidgeCV, x: np.ndarray) -> np.ndarray:
    return model.predict(np.log1p(x))


def within_day_r2(
    counts: np.ndarray, behavior: np.ndarray, trial_id: np.ndarray, segment_id: np.ndarray, n_lags: int,
    n_folds: int | None = None, test_fraction: float = 0.2,
) -> float:
    """Ridge R² on held-out trials: the last ``test_fraction`` of trials by default, or n-fold cross-validation
    split by trial (held-out bins of every fold pooled)."""
    x = lagged_features(counts, n_lags, segment_id)
    if n_folds is None:
        trials = np.unique(trial_id)
        test_trials = trials[int(round(len(trials) * (1 - test_fraction))):]
        test = np.isin(trial_id, test_trials)
        model = fit_ridge(x[~test], behavior[~test])
        return r2(behavior[test], predict_ridge(model, x[test]))
    pred = np.zeros_like(behavior, dtype=np.float64)
    for train, test in GroupKFold(n_splits=n_folds).split(x, behavior, trial_id):
        pred[test] = predict_ridge(fit_ridge(x[train], behavior[train]), x[test])
    return r2(behavior, pred)
