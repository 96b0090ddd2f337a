"""The same small hyper-parameter search for every model, scored on validation trials only.

Every gradient-trained model tries the same learning rates with the budget of the evaluation config (epochs, steps,
batch, early stopping); the Wiener filter tries history lengths (its ridge penalty is already chosen on validation
windows in closed form); the current-bin ridge has nothing to search. A variant is scored by the newest-bin R² of
the training days' validation trials (what a live user gets), its window R² alongside. Test trials and the test day
are never touched. The winner of each model is written as an evaluate config (``search.yaml``) that ``alignnet
evaluate --config`` runs as is.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, fields
from typing import Any

import numpy as np

from alignnet.model.registry import model_class
from alignnet.recordings.dataset import Dataset
from alignnet.training.protocols import EvalConfig, Protocol, _closed_form, fit_days
from alignnet.training.windows import fit_contract, split_trials

log = logging.getLogger(__name__)

LEARNING_RATES = (0.001, 0.003, 0.01)  # every gradient-trained model
WIENER_LAGS = (2, 5, 10, 20)  # bins of history of the Wiener filter (those shorter than the window)


def variants(name: str, window_bins: int = 100) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, model overrides, training overrides) of one model's search."""
    if "learning_rate" in {f.name for f in fields(model_class(name).config_class)}:  # trains itself (CEBRA)
        return [(f"lr={lr:g}", {"learning_rate": lr}, {}) for lr in LEARNING_RATES]
    if _closed_form(name) and "ridge" in name:
        return [("closed form", {}, {})]
    if _closed_form(name):
        lags = [n for n in WIENER_LAGS if n < window_bins] or [window_bins - 1]
        return [(f"n_lags={n}", {"n_lags": n}, {}) for n in lags]
    return [(f"lr={lr:g}", {}, {"lr": lr}) for lr in LEARNING_RATES]


def search_split(proto: Protocol, protocol: str):
    """Training and validation windows of ``protocol`` (test trials and the test day left out) and, per day, the
    validation trials scored at the newest bin."""
    c = proto.cfg
    days = [c.single_day] if protocol == "single-day" else (
        list(range(proto.pretrain_test_day())) if protocol == "pretrain" else c.cross_train_days)
    train, val, val_trials = [], [], {}
    for d in days:
        split = split_trials(proto.ds.day(d), c.test_fraction if protocol == "single-day" else 0.0, c.val_fraction,
                             proto.window)
        train.append(proto.windows(d, split["train"]))
        val.append(proto.windows(d, split["val"]))
        val_trials[d] = split["val"]
    return train, val, val_trials


def search(ds: Dataset, cfg: EvalConfig, models: list[str], protocol: str = "cross-day",
           progress=None) -> dict[str, Any]:
    """Train every variant of every model on ``protocol``'s training days; returns every score and the winners."""
    if protocol not in ("single-day", "cross-day", "pretrain"):
        raise ValueError(f"unknown protocol {protocol!r}; choose from single-day, cross-day, pretrain")
    cfg = copy.deepcopy(cfg)
    fit_days(cfg, len(ds), [protocol], ds.units_matched)
    base = Protocol(ds, copy.deepcopy(cfg))
    train, val, val_trials = search_split(base, protocol)
    contract = fit_contract(base.contract(), train)
    rows, best = [], {}
    for name in models:
        for label, model_over, train_over in variants(name, base.window):
            vcfg = copy.deepcopy(cfg)
            vcfg.models[name] = {**vcfg.models.get(name, {}), **model_over}
            if train_over:
                vcfg.model_train[name] = {**vcfg.model_train.get(name, {}), **train_over}
            proto = Protocol(ds, vcfg)
            t0 = time.perf_counter()
            use = _fit_days(name, proto, train, val)
            model, info = proto.fit_model(name, *use, contract)
            use_day = not proto.matched and not _closed_form(name)
            fitted = {w.day for w in use[0]}  # a closed-form filter on unmatched days is scored on its own day
            online = [proto.online_r2(model, d, t, contract, use_day) for d, t in val_trials.items()
                      if ds.day_names[d] in fitted]
            window = [proto.test(model, w, contract, use_day)[0] for w in val if w.day in fitted]
            row = {"model": name, "variant": label, "models": vcfg.models[name],
                   "model_train": vcfg.model_train.get(name, {}), "val_newest_bin_r2": float(np.mean(online)),
                   "val_window_r2": float(np.mean(window)), "train_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            log.info("search %s %s: validation newest-bin R2 %.3f, window R2 %.3f (%.0f s)", name, label,
                     row["val_newest_bin_r2"], row["val_window_r2"], row["train_s"])
            if progress is not None:
                progress(row)
            if name not in best or row["val_newest_bin_r2"] > best[name]["val_newest_bin_r2"]:
                best[name] = row
    return {"dataset": str(ds.root), "protocol": protocol, "config": asdict(cfg), "rows": rows, "best": best,
            "learning_rates": list(LEARNING_RATES), "wiener_lags": list(WIENER_LAGS)}


def _fit_days(name: str, proto: Protocol, train, val):
    """Closed-form filters on days with different units are fitted (and scored) on the first day alone."""
    if _closed_form(name) and not proto.matched:
        return [train[0]], [val[0]]
    return train, val


def best_config(cfg: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The evaluate config ``cfg`` (a full YAML config) with every model's winning variant written in."""
    out = copy.deepcopy(cfg)
    ev = out.setdefault("evaluate", {})
    for name, row in result["best"].items():
        if row["models"]:
            ev.setdefault("models", {})[name] = row["models"]
        if row["model_train"]:
            ev.setdefault("model_train", {})[name] = row["model_train"]
    return out


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"# Hyper-parameter search ({result['protocol']}, validation trials only)", "",
             f"Command: `{command}`", "",
             "Every gradient-trained model: learning rate in "
             f"{', '.join(f'{lr:g}' for lr in result['learning_rates'])} with the evaluation budget; Wiener filter: "
             f"history of {', '.join(map(str, result['wiener_lags']))} bins, those shorter than the window "
             "(ridge penalty chosen in closed form). "
             "Chosen by the newest-bin R² of the training days' validation trials; **bold** = chosen.", "",
             "| Model | variant | validation R² newest bin | validation R² window | train s |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        chosen = result["best"][r["model"]] == r
        v = f"**{r['variant']}**" if chosen else r["variant"]
        lines.append(f"| {r['model']} | {v} | {r['val_newest_bin_r2']:.3f} | {r['val_window_r2']:.3f} | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"
