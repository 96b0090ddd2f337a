"""The paper's protocols (§4), on any dataset.

- single-day: one day, trials split in recording order 70 / 10 / 20 % (train / validation / test; the 80 % of the
  paper is train + validation), no window straddles the split.
- cross-day: train on two days, test on a held-out later day; where units differ across days (real recordings) a
  small labelled slice of the new day (first ``calib_fraction`` of its trials) fits the new day's read-in alone, and
  the test is the rest of that day.
- pretrain (many days): every day recorded before the test day (by default the last day) is labelled training
  data for every model; AlignNet first pretrains on them (reconstruction of both modalities + contrastive
  alignment), then fine-tunes all parameters on them. Tested like cross-day. Later days are never used: a deployed
  decoder has only the past.

Hyper-parameters are chosen on validation windows only; test windows are touched once, for the final numbers.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from alignnet.model import create_model
from alignnet.model.base import BidirectionalModel, n_params, run_batched
from alignnet.model.contract import DataContract
from alignnet.model.metrics import pearson, r2
from alignnet.model.registry import model_class
from alignnet.model.streaming import offline_twin
from alignnet.recordings.dataset import Dataset
from alignnet.recordings.psth import movement_onsets, per_bin, psth, psth_r
from alignnet.training.eval_config import PROTOCOLS, EvalConfig, ModelResult, fit_days  # noqa: F401
from alignnet.training.probes import probe_scores
from alignnet.training.trainer import TrainConfig, Trainer, seed_everything
from alignnet.training.windows import (
    DayWindows,
    first_trials,
    fit_contract,
    fit_hop,
    short_segments,
    split_trials,
    windows_in_trials,
)

log = logging.getLogger(__name__)

class Protocol:
    """Builds windows for one dataset and evaluation config, and trains/tests models on them."""

    def __init__(self, ds: Dataset, cfg: EvalConfig, run_dir=None) -> None:
        self.ds, self.cfg, self.run_dir = ds, cfg, run_dir
        c = ds.contract()
        self.window = cfg.window_bins or c.window_bins
        self.hop = fit_hop(cfg.hop_bins or ds.manifest.get("default_hop_bins", max(1, self.window // 10)), self.window)
        self.behavior = cfg.behavior or c.behavior_kind
        self.matched = ds.units_matched
        self.cross = short_segments(ds, self.window) if cfg.cross_segments is None else bool(cfg.cross_segments)
        self.model_channels = c.n_channels if self.matched else cfg.model_channels
        self.predictions: dict[str, dict[str, np.ndarray]] = {}  # for figures
        self.ceilings: dict[str, dict[str, float]] = {}  # per protocol: what the recorded counts themselves score
        self._onsets: dict[str, np.ndarray] = {}  # per protocol: the test day's movement onset of each trial

    # ---- windows -----------------------------------------------------------------------------------------------
    def windows(self, day: int, trials=None) -> DayWindows:
        return windows_in_trials(self.ds.day(day), trials, self.window, self.hop, self.behavior, self.cross)

    def test_windows(self, day: int, trials=None) -> DayWindows:
        # test windows do not overlap, so every held-out bin counts once
        return windows_in_trials(self.ds.day(day), trials, self.window, self.window, self.behavior, self.cross)

    def contract(self):
        return self.ds.contract(n_channels=self.model_channels, window_bins=self.window, behavior_kind=self.behavior)

    # ---- models ------------------------------------------------------------------------------------------------
    def build(self, name: str, days: list[str]) -> BidirectionalModel:
        over = dict(self.cfg.models.get(name, {}))
        over.setdefault("n_channels", self.model_channels)
        over.setdefault("window_bins", self.window)
        model = create_model(name, **over)
        if not self.matched:
            for d in days:
                model.add_day(d, self.ds.day(d).n_channels)
        return model

    def train_cfg(self, stage: str, model: str | None = None, **extra) -> TrainConfig:
        own = self.cfg.model_train.get(model, {}) if stage != "readin" else {}
        base = {**self.cfg.train, **(self.cfg.pretrain if stage == "pretrain" else {}),
                **(self.cfg.readin if stage == "readin" else {}), **own, "seed": self.cfg.seed, **extra}
        return TrainConfig(**{**base, "stage": "both" if stage == "readin" else stage})

    def fit_model(self, name: str, train: list[DayWindows], val: list[DayWindows], contract: DataContract,
                  pretrain: list[DayWindows] | None = None) -> tuple[BidirectionalModel, dict[str, Any]]:
        """Train one model; AlignNet pretrains on ``pretrain`` (default: the training windows) first."""
        seed_everything(self.cfg.seed)
        days = sorted({w.day for w in train + val + (pretrain or [])})
        use_readin = not self.matched
        if _closed_form(name) and use_readin:
            # a closed-form filter has no read-in: it is fitted on one day's own units
            if len({w.day for w in train}) > 1:
                raise ValueError(f"{name} on days with different units: fit it on one day")
            over = {**self.cfg.models.get(name, {}), "n_channels": train[0].n_channels,
                    "window_bins": self.window}
            model, use_readin = create_model(name, **over), False
        else:
            model = self.build(name, days)
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        if hasattr(model, "pretrain_outputs") and self.cfg.pretrain.get("epochs", 1) > 0:
            # AlignNet is always trained as the paper does: pretraining (reconstructions + InfoNCE), then
            # fine-tuning of all parameters; the many-days protocol only gives it (and everyone) more days
            info["pretrain"] = Trainer(model, self.train_cfg("pretrain", name), day_names_use_readin=use_readin).fit(
                pretrain or train, val, contract)
        info["finetune"] = Trainer(model, self.train_cfg("both", name), day_names_use_readin=use_readin).fit(
            train, val, contract)
        info["train_s"] = time.perf_counter() - t0
        return model, info

    def new_day_readin(self, model: BidirectionalModel, day: str, calib: DayWindows, contract: DataContract) -> None:
        """Fit a new day's read-in (and read-out) alone on its labelled calibration slice."""
        model.add_day(day, calib.n_channels)
        n = len(calib)
        val_idx = np.arange(n)[int(n * 0.8):]
        cfg = self.train_cfg("readin", train_only=[f"days.{day}."])
        Trainer(model, cfg, day_names_use_readin=True).fit(
            [calib.take(np.arange(int(n * 0.8)))], [calib.take(val_idx)], contract)

    @torch.no_grad()
    def test(self, model: BidirectionalModel, test: DayWindows, contract: DataContract, use_day: bool) -> tuple:
        model.eval()
        day = test.day if use_day else None
        dec = run_batched(model.decode, model, contract.preprocess_spikes(test.counts), day)
        behavior_pred = contract.postprocess_behavior(dec)
        if not model.simulates:  # a decode-only yardstick
            return r2(test.behavior, behavior_pred, feature_axis=1), None, behavior_pred, None
        sim = run_batched(model.simulate, model, contract.preprocess_behavior(test.behavior), day)
        counts_pred = contract.postprocess_rates(sim)
        return (r2(test.behavior, behavior_pred, feature_axis=1), pearson(test.counts, counts_pred, feature_axis=1),
                behavior_pred, counts_pred)

    def online_r2(self, model: BidirectionalModel, day_index: int, trials: np.ndarray, contract: DataContract,
                  use_day: bool) -> float:
        return r2(*self.newest_bins(model, day_index, trials, contract, use_day)[1:])

    @torch.no_grad()
    def newest_bins(self, model: BidirectionalModel, day_index: int, trials: np.ndarray, contract: DataContract,
                    use_day: bool) -> tuple[int, np.ndarray, np.ndarray]:
        """What a live user gets, scored by ``online_r2`` (newest-bin R²): the day from the first of ``trials`` to the
        last, streamed bin by bin from zero history (as ``alignnet replay --start-s`` streams it to the service),
        each bin decoded as the newest of its window (hop 1). -> (first bin, behavior (n, D), decoded (n, D))."""
        model.eval()
        day = self.ds.day(day_index)
        inside = np.flatnonzero(np.isin(day.trial_id, trials))
        start, n = int(inside[0]), int(inside[-1]) + 1 - int(inside[0])
        if self.cfg.online_seconds:
            n = min(n, int(round(self.cfg.online_seconds / day.bin_s)))
        name = self.ds.day_names[day_index] if use_day else None

        def decode(counts: np.ndarray) -> np.ndarray:
            return contract.postprocess_behavior(run_batched(model.decode, model, contract.preprocess_spikes(counts),
                                                             name))

        pred = offline_twin(decode, day.counts[start:start + n], self.window, hop=1)
        return start, day.behavior(self.behavior)[start:start + n], pred

    def score(self, tag: str, name: str, model: BidirectionalModel, test: DayWindows, day_index: int,
              trials: np.ndarray, contract: DataContract, use_day: bool, info: dict[str, Any],
              train: list[DayWindows] = ()) -> ModelResult:
        """Window R² and r on the test windows and newest-bin R² on the test range (and under the config's probes,
        whose mean latent is taken over ``train``); the test windows' predictions are kept under ``tag/name`` for
        the figures."""
        score_r2, score_r, beh, counts = self.test(model, test, contract, use_day)
        online = self.online_r2(model, day_index, trials, contract, use_day)
        if probes := probe_scores(model, self.cfg.probes, lambda: self.online_r2(model, day_index, trials, contract,
                                                                                 use_day), train, contract, use_day):
            info = {**info, "probes": probes}
        trial_day = self.ds.day(day_index).split_by == "trial"  # a continuous session has no onsets to align on
        rate_r, psth_r_, psth_ = (self.simulation_scores(tag, counts, test, day_index, trials)
                                  if counts is not None and trial_day else (None, None, None))
        self.predictions[f"{tag}/{name}"] = {"behavior": beh, "counts": counts, "psth": psth_}
        res = ModelResult(name, score_r2, score_r, info["train_s"], n_params(model), online,
                          bool(model.causal_decode), rate_r, psth_r_, dict(info))
        log.info("%s %s: R2 %.3f (newest bin %.3f) r %s (%.0f s)", tag, name, res.s2b_r2, online, res.b2s_r,
                 res.train_s)
        return res

    def simulation_scores(self, tag: str, counts_pred: np.ndarray, test: DayWindows, day_index: int,
                          trials: np.ndarray) -> tuple[float | None, float, np.ndarray]:
        """B->S judged where single-trial counts cannot judge it: r against the simulator's true rates (None on
        real data) and the PSTH r (per target, time-locked to movement onset); the recorded counts' own scores
        are kept once per protocol as references (``ceilings`` in the results: the counts' trial noise; a model's
        noiseless prediction can score above the counts' PSTH r)."""
        day = self.ds.day(day_index)
        pred = per_bin(counts_pred, test.starts, day.n_bins)
        seen = np.isfinite(pred[:, 0])
        truth = day.extra.get("truth_rate")
        observed = np.where(seen[:, None], day.counts, np.nan)
        if tag not in self.ceilings:  # once per protocol: the test day's movement onsets and reference PSTH
            onsets = self._onsets[tag] = movement_onsets(day)
            ref = psth(np.where(seen[:, None], truth, np.nan) if truth is not None else observed, day, onsets, trials)
            self.predictions[f"{tag}/truth"] = {"psth": ref}
            if truth is not None:  # what the recorded counts score against the truth: their trial noise
                self.ceilings[tag] = {"rate_r": pearson(truth[seen], day.counts[seen]),
                                      "psth_r": psth_r(ref, psth(observed, day, onsets, trials))}
            else:  # split-half reliability of the recorded PSTH (odd against even trials)
                self.ceilings[tag] = {"psth_r_split_half": psth_r(psth(observed, day, onsets, trials[::2]),
                                                                  psth(observed, day, onsets, trials[1::2]))}
        ref = self.predictions[f"{tag}/truth"]["psth"]
        model_psth = psth(pred, day, self._onsets[tag], trials)
        rate_r = pearson(truth[seen], pred[seen]) if truth is not None else None
        return rate_r, psth_r(ref, model_psth), model_psth

    # ---- protocols ---------------------------------------------------------------------------------------------
    def single_day(self, models: list[str]) -> list[ModelResult]:
        c = self.cfg
        day = self.ds.day(c.single_day)
        split = split_trials(day, c.test_fraction, c.val_fraction, self.window)
        train, val = [self.windows(c.single_day, split["train"])], [self.windows(c.single_day, split["val"])]
        test = self.test_windows(c.single_day, split["test"])
        contract = fit_contract(self.contract(), train)
        out = []
        for name in models:
            model, info = self.fit_model(name, train, val, contract)
            use_day = not self.matched and not _closed_form(name)
            out.append(self.score("single-day", name, model, test, c.single_day, split["test"], contract, use_day,
                                  info, train))
        self.predictions.setdefault("single-day/truth", {}).update(behavior=test.behavior, counts=test.counts)
        return out

    def _cross_split(self, train_days: list[int], test_day: int) -> tuple[
            list[DayWindows], list[DayWindows], DayWindows | None, DayWindows, np.ndarray]:
        c = self.cfg
        train, val = [], []
        for d in train_days:
            split = split_trials(self.ds.day(d), 0.0, c.val_fraction, self.window)
            train.append(self.windows(d, split["train"]))
            val.append(self.windows(d, split["val"]))
        day = self.ds.day(test_day)
        calib = None
        test_trials = np.unique(day.trial_id)
        if c.calib_fraction > 0:
            calib_trials = first_trials(day, c.calib_fraction)
            calib = self.windows(test_day, calib_trials)
            test_trials = np.setdiff1d(test_trials, calib_trials)
        elif not self.matched:
            raise ValueError("units differ across days: cross-day needs calib_fraction > 0 to fit the new day's "
                             "read-in (the real-data protocol uses at most 0.1)")
        return train, val, calib, self.test_windows(test_day, test_trials), test_trials

    def cross_day(self, models: list[str], pretrain: bool = False) -> list[ModelResult]:
        c = self.cfg
        test_day = self.pretrain_test_day() if pretrain else c.cross_test_day
        # many days: only days recorded before the test day (a deployed decoder never has later days)
        train_days = list(range(test_day)) if pretrain else c.cross_train_days
        train, val, calib, test, test_trials = self._cross_split(train_days, test_day)
        contract = fit_contract(self.contract(), train)
        tag = "pretrain" if pretrain else "cross-day"
        out = []
        for name in models:
            if _closed_form(name) and not self.matched:
                # no read-in for a closed-form filter: fitted on the labelled slice of the new day itself
                n = len(calib)
                model, info = self.fit_model(name, [calib.take(np.arange(int(n * 0.8)))],
                                             [calib.take(np.arange(int(n * 0.8), n))], contract)
                use_day = False
            else:
                model, info = self.fit_model(name, train, val, contract)
                use_day = not self.matched
                if use_day:
                    t0 = time.perf_counter()
                    self.new_day_readin(model, test.day, calib, contract)
                    info["readin_s"] = time.perf_counter() - t0
            res = self.score(tag, name, model, test, test_day, test_trials, contract, use_day, info, train)
            if not pretrain and self.matched:  # accuracy against days apart
                res.details["r2_by_day"] = self.by_day(model, contract)
            out.append(res)
        self.predictions.setdefault(f"{tag}/truth", {}).update(behavior=test.behavior, counts=test.counts)
        return out

    def pretrain_test_day(self) -> int:
        day = len(self.ds) - 1 if self.cfg.pretrain_test_day is None else self.cfg.pretrain_test_day % len(self.ds)
        if day < 1:
            raise ValueError("the many-days protocol needs at least one day before its test day")
        return day

    def by_day(self, model: BidirectionalModel, contract: DataContract) -> dict[str, float]:
        """R² on the whole of every day (training days included, marked by the figure)."""
        return {str(d): self.test(model, self.test_windows(d), contract, False)[0] for d in range(len(self.ds))}


def _closed_form(name: str) -> bool:
    """A closed-form model (Wiener filter, ridge) has no read-in: it is fitted on one day's own units."""
    return not model_class(name).needs_gradients


def run(ds: Dataset, cfg: EvalConfig, protocols: list[str], models: list[str]) -> tuple[dict[str, Any], Protocol]:
    """Run the protocols; returns the results (JSON-able) and the Protocol (predictions for figures)."""
    cfg = copy.deepcopy(cfg)
    protocols, notes = fit_days(cfg, len(ds), protocols, ds.units_matched)
    for note in notes:
        log.info("%s", note)
    proto = Protocol(ds, cfg)
    if "pretrain" in protocols:
        proto.pretrain_test_day()  # a clear error before any training
    results: dict[str, Any] = {"dataset": str(ds.root), "subject": ds.subject, "config": asdict(cfg), "notes": notes,
                               "window_bins": proto.window, "hop_bins": proto.hop, "behavior": proto.behavior,
                               "units_matched": ds.units_matched, "protocols": {}}
    for p in protocols:
        if p == "single-day":
            rows = proto.single_day(models)
        else:
            rows = proto.cross_day(models, pretrain=(p == "pretrain"))
        results["protocols"][p] = [asdict(r) for r in rows]
        results.setdefault("ceilings", {})[p] = proto.ceilings.get(p)
        if p == "pretrain":
            results["pretrain_days"] = list(range(proto.pretrain_test_day()))
            results["pretrain_test_day"] = proto.pretrain_test_day()
    return results, proto
