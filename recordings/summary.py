"""Per-day summaries and a drift summary of a dataset (``alignnet data info``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from alignnet.model.metrics import r2
from alignnet.recordings.dataset import Dataset, Day, fit_hop, segment_lengths, short_segments
from alignnet.recordings.linear import fit_ridge, lagged_features, predict_ridge, within_day_r2
from alignnet.recordings.preprocess import smooth_behavior

TUNED_R2 = 0.02  # a channel counts as tuned when cosine tuning explains this much of its smoothed counts


def fit_preferred_directions(day: Day, lead_s: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Cosine tuning per channel: counts[t] ~ a + b . vel[t + lead]. Returns (pd radians (C,), fit R² (C,))."""
    lead = max(0, int(round(lead_s / day.bin_s)))
    n = day.n_bins - lead
    vel = day.vel[lead:lead + n].astype(np.float64)
    # smooth counts over ~100 ms: single 20-ms bins are too sparse for a stable per-channel fit
    y = smooth_behavior(day.counts[:n].astype(np.float64), 0.05 / day.bin_s, day.segment_id[:n])
    # keep only pairs inside one segment
    ok = day.segment_id[:n] == day.segment_id[lead:lead + n]
    x = np.column_stack([np.ones(ok.sum()), vel[ok]])
    coef, *_ = np.linalg.lstsq(x, y[ok], rcond=None)
    resid = y[ok] - x @ coef
    ss_tot = ((y[ok] - y[ok].mean(0)) ** 2).sum(0)
    fit = 1 - (resid**2).sum(0) / np.where(ss_tot > 0, ss_tot, 1)
    return np.arctan2(coef[2], coef[1]), np.where(ss_tot > 0, fit, 0.0)


def angle_diff_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.rad2deg(np.abs(np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b))))))


RIDGE_MIN_TRIALS = 5  # the within-day ridge R² needs this many trials (or time blocks) to hold out the last 20 %


def why_missing(day: Day, behavior: str) -> str | None:
    """Why the day's within-day ridge R² cannot be given (None: it can)."""
    if day.n_trials < RIDGE_MIN_TRIALS:
        return f"{day.name}: fewer than {RIDGE_MIN_TRIALS} trials to hold out the last 20 % of"
    if not np.ptp(day.behavior(behavior), axis=0).any():
        return f"{day.name}: behavior '{behavior}' never changes, so R² is undefined"
    return None


def day_summary(day: Day, window_bins: int, hop_bins: int, behavior: str) -> dict[str, Any]:
    rates = day.counts.mean(axis=0) / day.bin_s
    n_lags = max(1, int(round(0.2 / day.bin_s)))
    return {
        "name": day.name,
        "trials": day.n_trials,
        "segments": int(np.unique(day.segment_id).size),
        "bins": day.n_bins,
        "minutes": round(day.n_bins * day.bin_s / 60, 2),
        "channels": day.n_channels,
        "split_by": day.split_by,
        "windows": int(day.window_starts(window_bins, hop_bins).size),
        "rate_hz_median": round(float(np.median(rates)), 2),
        "rate_hz_min": round(float(rates.min()), 2),
        "rate_hz_max": round(float(rates.max()), 2),
        "silent_channels": int((rates < 0.5).sum()),
        f"ridge_r2_{behavior}_last20pct": round(
            within_day_r2(day.counts, day.behavior(behavior), day.trial_id, day.segment_id, n_lags), 3
        ) if why_missing(day, behavior) is None else None,
    }


def drift_summary(ds: Dataset, behavior: str) -> list[dict[str, Any]]:
    """Against the first day: change of fitted preferred directions, and R² of a ridge decoder trained on day 0.

    Only meaningful where channels keep their meaning across days (``units_matched``)."""
    if not ds.units_matched:
        return []
    ref = ds.day(0)
    n_lags = max(1, int(round(0.2 / ref.bin_s)))
    pd0, fit0 = fit_preferred_directions(ref)
    model = fit_ridge(lagged_features(ref.counts, n_lags, ref.segment_id), ref.behavior(behavior))
    rows = []
    for i in range(len(ds)):
        day = ds.day(i)
        pd, fit = fit_preferred_directions(day)
        tuned = (fit0 > TUNED_R2) & (fit > TUNED_R2)
        pred = predict_ridge(model, lagged_features(day.counts, n_lags, day.segment_id))
        row = {
            "name": day.name,
            "tuned_channels": int(tuned.sum()),
            "pd_change_deg_median": round(float(np.median(angle_diff_deg(pd[tuned], pd0[tuned]))), 1)
            if tuned.any() else None,
            f"day0_ridge_r2_{behavior}": round(r2(day.behavior(behavior), pred), 3)
            if np.ptp(day.behavior(behavior), axis=0).all() else None,
        }
        if "truth_channel_pd" in day.extra:  # simulated: the drift that was put in
            row["truth_pd_change_deg_median"] = round(float(np.median(angle_diff_deg(
                day.extra["truth_channel_pd"], ref.extra["truth_channel_pd"]))), 1)
            a0, a = ref.extra["truth_active"], day.extra["truth_active"]
            row["truth_units_turned_over"] = int((a0 != a).sum())
            # pitches from the array's home position (2-D on a grid array; truth_shift_y is 0 on a line)
            row["truth_electrode_shift"] = round(float(np.hypot(day.extra["truth_shift"],
                                                                day.extra.get("truth_shift_y", 0.0))), 3)
        rows.append(row)
    return rows


def training_plan(ds: Dataset, hop_bins: int = 20) -> list[str]:
    """What `alignnet train` and `evaluate` will use on this dataset with the default config, and why."""
    c = ds.contract()
    w = c.window_bins
    lengths = segment_lengths(ds.day(i) for i in range(len(ds)))
    cross = short_segments(ds, w)
    lines = [f"window {w} bins ({w * c.bin_s:g} s): " + (
        "2 s of bins" if w == min(100, round(2.0 / c.bin_s)) else
        f"the median segment ({np.median(lengths):g} bins)" if w < round(2.0 / c.bin_s)
        else "as imported"),
        f"training hop {fit_hop(hop_bins, w)} bins (the config's {hop_bins}; a fifth of the window where that is "
        "more than half of it)",
        "windows concatenate movement periods: " + (
            f"yes (median segment {np.median(lengths):g} bins, under two windows)" if cross
            else "no (segments hold windows)"),
        f"Wiener filter history {min(10, w - 1)} bins (10, at most the window minus one)"]
    by_time = [ds.day_names[i] for i in range(len(ds)) if ds.day(i).split_by == "time"]
    lines.append("splits: by trial (70/10/20 % in recording order)" if not by_time else
                 f"splits: by time for {', '.join(by_time)} (fewer than 10 trials: 50 contiguous blocks, 70/10/20 %, "
                 "a window's gap before validation and test); by trial elsewhere")
    lines.append("evaluate protocols: single-day" + (", cross-day" if len(ds) >= 2 else " (one day: no cross-day)"))
    if not ds.units_matched:
        lines.append("units differ by day: one read-in per day into a 64-channel model space")
    return lines


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0].keys())
    cells = [[("-" if r.get(k) is None else str(r.get(k))) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "  ".join(k.ljust(w) for k, w in zip(keys, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(out)
