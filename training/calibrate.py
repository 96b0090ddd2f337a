"""Calibrate a trained model for a new recording day: fit that day's read-in (and read-out) alone, base weights and
batch-norm statistics frozen, and write an artifact that serves the day.

- **few-shot**: the first N trials (or S seconds) of the day with their behavior; decode + simulate MSE.
- **zero-label** (matched channels only): the same slice without behavior. The read-in becomes the per-channel
  affine map that gives each channel of the model input the mean and standard deviation it had on the training
  days (``channel_reference`` in the artifact), in closed form. Chosen by measurement (docs/results.md): on
  simulated days 6-12 it raised R² on every day, while every gradient method tried from the same start made it
  worse — a diagonal Gaussian KL plus CORAL on the AlignNet latent (NoMAD-like) −1.9 on day 12, spike reconstruction
  through the frozen autoencoder −1.6, moment matching of the decoded behavior 0.07 (the map alone: 0.20). Matching
  latent moments leaves every rotation of the latent free; per-channel statistics cannot rotate anything. Sorted
  units of a new day have no channel of the training days to match, so they need a few labelled trials.

A model trained on matched channels gets a read-in that starts as the identity (no change), so few-shot
calibration starts from what the base decodes; a model trained on sorted units gets a fresh read-in for the day's
own units.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignnet.model.artifacts import load_artifact, model_contract, save_artifact
from alignnet.model.base import run_batched
from alignnet.model.metrics import r2
from alignnet.recordings.dataset import DataError, Dataset, Day
from alignnet.training.export import export_artifact
from alignnet.training.trainer import TrainConfig, Trainer, seed_everything
from alignnet.training.windows import DayWindows, short_segments, windows_in_trials

log = logging.getLogger(__name__)

MIN_WINDOWS = 8  # fewer calibration windows than this cannot fit a read-in and keep a validation slice


def calibration_trials(day: Day, trials: int | None = None, seconds: float | None = None) -> np.ndarray:
    """Trial ids of the day's first ``trials`` trials, or of the trials that start in its first ``seconds``."""
    ids = np.unique(day.trial_id)
    if trials is not None:
        if trials < 1:
            raise ValueError(f"--trials must be >= 1, got {trials}")
        return ids[:trials]
    if seconds is None or seconds <= 0:
        raise ValueError("give the calibration slice as a number of trials or of seconds (> 0)")
    t0 = day.time_s[0]
    start = {t: day.time_s[np.argmax(day.trial_id == t)] - t0 for t in ids}
    return np.asarray([t for t in ids if start[t] < seconds])


def calibrate(base: Path, data: Path, day: str | int, out: Path, *, trials: int | None = None,
              seconds: float | None = None, zero_label: bool = False, train: dict[str, Any] | None = None,
              export: bool = True) -> dict[str, Any]:
    """Fit ``day``'s read-in on its first trials (or seconds) and write the calibrated artifact to ``out``.
    Returns a report: slice, fit, and the R² of the rest of the day (when it has behavior) before and after."""
    readin_config("day", train)  # a wrong setting is refused before any data is read
    model, _, config = load_artifact(base)
    mc = model_contract(config)
    if zero_label and (problem := zero_label_problem(config)):  # before reading any data
        raise DataError(f"{base}: {problem}")
    ds = Dataset(data)
    d = ds.day(ds.day_index(day))
    if mc.units_matched and d.n_channels != mc.n_channels:
        raise DataError(f"{data}: day {d.name} has {d.n_channels} channels; the model reads {mc.n_channels} matched "
                        "channels")
    if abs(d.bin_s - mc.bin_s) > 1e-9:
        raise DataError(f"{data}: bins of {d.bin_s * 1000:g} ms; the model was trained on {mc.bin_s * 1000:g} ms")
    calib = calibration_trials(d, trials, seconds)
    window, behavior = mc.window_bins, mc.behavior_kind
    cross = short_segments(d, window)
    w = windows_in_trials(d, calib, window, max(1, window // 10), behavior, cross_segments=cross)
    name = day_name(d.name)
    served = mc.for_day(d.n_channels)
    rest = rest_windows(d, calib, window, behavior, cross)
    # before: the base as it is (matched channels only: sorted units of a new day cannot be read without a read-in)
    before = _rest_r2(model, rest, served, config.get("served_day")) if mc.units_matched else None
    fit = fit_readin(model, config, name, w, zero_label, train)
    after = _rest_r2(model, rest, served, name)
    report = {"base": str(base), "data": str(data), "day": d.name, "served_day": name,
              "mode": "zero-label" if zero_label else "few-shot", "trials": int(len(calib)),
              "seconds": float(np.isin(d.trial_id, calib).sum() * d.bin_s), "windows": len(w),
              **fit, "rest_r2_before": before, "rest_r2_after": after}
    write_calibrated(out, model, config, name, d.n_channels, base, report, export)
    return report


def zero_label_problem(config: dict[str, Any]) -> str | None:
    """Why a model cannot be calibrated without behavior (None: it can): `calibrate --zero-label`,
    ``POST /calibrate`` without behavior and ``serve --calibrate-seconds`` all ask this."""
    if not model_contract(config).units_matched:
        return ("the model reads sorted units, which a new day does not share: zero-label calibration needs matched "
                "channels (the same electrode every day); calibrate with a few labelled trials instead (--trials N, "
                "or behavior with the spikes in POST /calibrate)")
    if not config.get("channel_reference"):
        return ("the artifact has no channel_reference (the training days' channel statistics); zero-label "
                "calibration needs a model trained by this version of `alignnet train`")
    return None


def day_name(name: str) -> str:
    """The read-in name of a calibrated day (module names take no dots)."""
    clean = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))
    return "cal_" + clean


def fit_readin(model, config: dict[str, Any], name: str, w: DayWindows, zero_label: bool,
               train: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add day ``name``'s read-in to ``model`` and fit it alone on windows ``w`` (80 % fit, the last 20 % for
    early stopping); with ``zero_label`` the behavior is ignored and the read-in is the closed-form channel match
    (``match_channels``). Returns the fit's summary."""
    mc = model_contract(config)
    n_channels = w.n_channels
    if mc.units_matched and n_channels != mc.n_channels:
        raise DataError(f"the calibration spikes have {n_channels} channels; the model reads {mc.n_channels} "
                        "matched channels")
    if zero_label and (problem := zero_label_problem(config)):
        raise DataError(problem)
    if len(w) < MIN_WINDOWS:
        raise DataError(f"the calibration data holds {len(w)} windows of {mc.window_bins} bins; at least "
                        f"{MIN_WINDOWS} are needed — give more trials or seconds")
    cfg = readin_config(name, train)  # a wrong setting is refused before the model changes
    adapter = model.add_day(name, n_channels)
    if mc.units_matched:  # start from no change
        with torch.no_grad():
            for conv in (adapter.read_in, adapter.read_out):
                conv.weight.copy_(torch.eye(conv.out_channels, conv.in_channels)[:, :, None])
                conv.bias.zero_()
    t0 = time.perf_counter()
    if zero_label:
        mean, std = match_channels(adapter, config["channel_reference"], mc.preprocess_spikes(w.counts))
        model.eval()
        return {"fit_s": round(time.perf_counter() - t0, 3), "method": "channel statistics",
                "channels_rescaled": int(np.sum(np.abs(std - 1) > 0.05)), "mean_shift": float(np.mean(np.abs(mean)))}
    seed_everything(0)
    w = DayWindows(name, w.counts, w.behavior, w.starts)  # the Trainer reads each batch through its day's read-in
    n = len(w)
    cut = max(1, int(round(n * 0.8)))
    fit = Trainer(model, cfg, day_names_use_readin=True).fit([w.take(np.arange(cut))], [w.take(np.arange(cut, n))],
                                                             mc)
    model.cpu().eval()  # saved, exported and served from the CPU whatever device fitted it
    return {"fit_s": round(time.perf_counter() - t0, 1), "method": "read-in fitted on labelled windows",
            "epochs": fit.get("epochs"), "best_val_loss": fit.get("best_val_loss")}


READIN_DEFAULTS = {"epochs": 60, "batch_size": 32, "lr": 0.01, "patience": 10, "progress": True,
                   "device": "cpu", "compile": False}  # a few hundred windows: a compile would cost more than it saves


def readin_config(name: str, train: dict[str, Any] | None) -> TrainConfig:
    """The read-in fit's settings: ``READIN_DEFAULTS`` overridden by ``train`` (``alignnet calibrate --set
    device=cuda``, ``--set epochs=30``, ...). A setting that is not a training setting is refused, naming it."""
    train = dict(train or {})
    TrainConfig.check_keys(train, "calibration", ("stage", "train_only"), "the fit trains the day's read-in alone")
    return TrainConfig(**{**READIN_DEFAULTS, **train, "stage": "both", "train_only": [f"days.{name}."]})


@torch.no_grad()
def match_channels(adapter, reference: dict[str, list], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-label read-in: a per-channel affine map that gives each channel of the model input ``x`` (N, C, T) the
    training days' mean and standard deviation. A channel silent in ``x`` reads as its training mean (it carries
    nothing today); scales are clipped to [0.1, 10]. Returns the map's (C,) offsets (in training standard
    deviations) and scales. Written by hand: two lines of moments; no library fits a read-in of our model."""
    flat = x.transpose(1, 0, 2).reshape(x.shape[1], -1).astype(np.float64)
    mean, std = flat.mean(1), flat.std(1)
    ref_mean = np.asarray(reference["mean"], np.float64)
    ref_std = np.asarray(reference["std"], np.float64)
    live = std > 1e-6
    scale = np.where(live, np.clip(ref_std / np.where(live, std, 1.0), 0.1, 10.0), 0.0)
    bias = ref_mean - scale * mean
    adapter.read_in.weight.copy_(torch.diag(torch.as_tensor(scale, dtype=torch.float32))[:, :, None])
    adapter.read_in.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return (mean - ref_mean) / np.maximum(ref_std, 1e-6), scale


def write_calibrated(out: Path, model, config: dict[str, Any], name: str, n_channels: int, base: Path,
                     report: dict[str, Any], export: bool = True) -> Path:
    """The calibrated artifact: the day's contract served, the model space's kept, exported (parity-checked)."""
    mc = model_contract(config)
    save_artifact(out, model, mc.for_day(n_channels), metrics={"calibration": report},
                  extra={"served_day": name, "model_contract": mc.to_dict(),
                         "latent_reference": config.get("latent_reference"),
                         "channel_reference": config.get("channel_reference")},
                  provenance={**config.get("provenance", {}), "calibrated_from": str(base)})
    if export:
        export_artifact(out, ("onnx",))
    return out


def block_windows(counts: np.ndarray, behavior: np.ndarray, window: int, name: str) -> DayWindows:
    """Windows (hop = a tenth of the window) of one contiguous block of bins: counts (C, n), behavior (D, n)."""
    from alignnet.recordings.preprocess import gather_windows, window_starts

    starts = window_starts(np.zeros(counts.shape[1], np.int64), window, max(1, window // 10))
    return DayWindows(name, gather_windows(counts.T.astype(np.float32), starts, window),
                      gather_windows(behavior.T.astype(np.float32), starts, window), np.asarray(starts, np.int64))


def calibrate_block(base: Path, counts: np.ndarray, behavior: np.ndarray | None, day: str, out: Path,
                    train: dict[str, Any] | None = None) -> dict[str, Any]:
    """Calibrate from one block of binned counts (C, n) (and behavior (D, n), or None: zero-label), as the service
    receives them; writes the calibrated artifact to ``out``."""
    model, _, config = load_artifact(base)
    mc = model_contract(config)
    if behavior is not None and behavior.shape != (mc.behavior_dims, counts.shape[1]):
        raise DataError(f"behavior must be {mc.behavior_dims} x {counts.shape[1]} (dims x the spikes' bins), got "
                        f"{behavior.shape}")
    name = day_name(day)
    zeros = np.zeros((mc.behavior_dims, counts.shape[1]), np.float32)  # zero-label: never read by the align loss
    w = block_windows(counts, behavior if behavior is not None else zeros, mc.window_bins, name)
    zero_label = behavior is None
    fit = fit_readin(model, config, name, w, zero_label, {"progress": False, **(train or {})})
    report = {"base": Path(base).name, "day": day, "served_day": name,  # a name: reports are shown to clients
              "mode": "zero-label" if zero_label else "few-shot", "bins": int(counts.shape[1]),
              "seconds": float(counts.shape[1] * mc.bin_s), "windows": len(w), **fit}
    write_calibrated(out, model, config, name, counts.shape[0], base, report)
    return report


def rest_windows(d: Day, calib: np.ndarray, window: int, behavior: str, cross: bool) -> DayWindows:
    """Whole non-overlapping windows of the day's trials after the calibration slice: what calibration is scored on."""
    return windows_in_trials(d, np.setdiff1d(np.unique(d.trial_id), calib), window, window, behavior, cross)


@torch.no_grad()
def _rest_r2(model, w: DayWindows, served, day_name: str | None) -> float | None:
    """R² of ``model`` (through ``day_name``'s read-in) on the rest windows ``w`` (None without any, or where the
    behavior does not vary)."""
    if len(w) == 0 or not np.ptp(w.behavior, axis=(0, 2)).any():
        return None
    pred = run_batched(model.decode, model, served.preprocess_spikes(w.counts), day_name)
    return r2(w.behavior, served.postprocess_behavior(pred), feature_axis=1)

