"""No protocol learns from what it scores: poison the scored part of the data and nothing it trained or chose moves.

For each protocol (single-day, cross-day with matched channels and with sorted units, many days, `alignnet train`'s
held-out block, the search, calibration), the bins it scores are replaced in a copy of the dataset: behavior by
random values of another mean and scale, and the spike counts by another Poisson draw (for cross-day with sorted
units, the new day's spikes outside its labelled calibration slice). The run is repeated on the copy: every trained
weight must be bit for bit the same, and so must every selection (early-stopping epoch and validation loss, the
Wiener filter's ridge penalty, the search's scores and winners, the normalisation statistics). The scores must
differ, which shows the poison reached what is scored. The poisoned regions are written out here from the protocols'
documented definitions (the last 20 % of a day's trials; the test day; the first 10 % of its trials for
calibration), not from the code under test.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from alignnet.model.artifacts import load_artifact
from alignnet.recordings.dataset import Dataset
from alignnet.training import search as search_mod
from alignnet.training.protocols import EvalConfig, Protocol, run
from alignnet.training.run import apply_overrides, load_config, train

MODELS = ["test-wiener", "test-gru", "test-alignnet"]
TIMING = ("train_s", "readin_s", "fit_s", "windows_per_s", "epoch_train_s")


def last_trials(day, fraction: float) -> np.ndarray:
    """Mask of the bins of the day's last ``fraction`` of trials, in recording order."""
    trials = np.unique(day.trial_id)
    return np.isin(day.trial_id, trials[len(trials) - int(round(len(trials) * fraction)):])


def after_first_trials(day, fraction: float) -> np.ndarray:
    """Mask of the bins after the day's first ``fraction`` of trials (at least one)."""
    trials = np.unique(day.trial_id)
    return ~np.isin(day.trial_id, trials[:max(1, int(round(len(trials) * fraction)))])


def poisoned(src: Path, dst: Path, regions: dict[int, np.ndarray], spikes: bool = True) -> Path:
    """A copy of dataset ``src`` in ``dst`` in which, for each day index, the bins of its mask have random behavior
    (mean 3, sd 5: nothing like the day's) and, with ``spikes``, counts redrawn at 4 spikes a bin."""
    shutil.copytree(src, dst)
    ds = Dataset(dst)
    rng = np.random.default_rng(123)
    for d, mask in regions.items():
        day = ds.day(d)
        assert mask.shape == (day.n_bins,) and mask.any(), d
        for key in ("pos", "vel"):
            values = getattr(day, key).copy()
            values[mask] = rng.normal(3.0, 5.0, (int(mask.sum()), values.shape[1]))
            setattr(day, key, values)
        if spikes:
            counts = day.counts.copy()
            counts[mask] = rng.poisson(4.0, (int(mask.sum()), counts.shape[1]))
            day.counts = counts
        day.save(dst / ds.days[d]["file"])
    return dst


def unmatched(src: Path, dst: Path) -> Path:
    """The same days marked as sorted units (a read-in per day, a calibration slice on the new day)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["units_matched"] = False
    manifest["contract"]["units_matched"] = False
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def without_timing(value):
    """A run's summaries without wall-clock figures (the only part that may differ between identical runs)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


@pytest.fixture(scope="module")
def tiny_cfg(tiny_dataset) -> EvalConfig:
    cfg, _ = load_config(str(tiny_dataset / "train.yaml"))
    ev = copy.deepcopy(cfg["evaluate"])
    ev["train"] = {**ev["train"], "epochs": 3, "patience": 1}  # early stopping has a choice to make
    ev["pretrain"] = {"epochs": 2}
    return EvalConfig.from_dict(ev)


def run_captured(monkeypatch, data: Path, cfg: EvalConfig, protocol: str) -> tuple[dict, dict]:
    """Run one protocol; returns (the weights each model was scored with, the results)."""
    scored: dict[str, dict[str, torch.Tensor]] = {}
    real = Protocol.score

    def score(self, tag, name, model, *args, **kwargs):
        scored[f"{tag}/{name}"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real(self, tag, name, model, *args, **kwargs)

    monkeypatch.setattr(Protocol, "score", score)
    results, _ = run(Dataset(data), cfg, [protocol], MODELS)
    monkeypatch.setattr(Protocol, "score", real)
    return scored, results


def selections(results: dict) -> dict:
    """What a protocol chose, per model: early stopping and closed-form penalties (the training summaries; the R² of
    every day beside them is a score)."""
    return {p: [without_timing({k: v for k, v in r["details"].items() if k != "r2_by_day"}) for r in rows]
            for p, rows in results["protocols"].items()}


def scores(results: dict) -> list[float]:
    return [r[k] for rows in results["protocols"].values() for r in rows for k in ("s2b_r2", "online_r2")]


@pytest.mark.parametrize("protocol", ["single-day", "cross-day", "pretrain", "cross-day sorted units"])
def test_poisoning_what_a_protocol_scores_changes_nothing_it_trained_or_chose(protocol, tiny_dataset, tiny_cfg,
                                                                              tmp_path, monkeypatch):
    clean = tiny_dataset / "D"
    ds = Dataset(clean)
    name = protocol.split()[0]
    if protocol == "single-day":  # the last 20 % of day 0's trials are its test
        regions = {0: last_trials(ds.day(0), tiny_cfg.test_fraction)}
    elif protocol == "cross-day sorted units":  # the new day after its labelled first 10 %
        clean = unmatched(clean, tmp_path / "U")
        regions = {2: after_first_trials(ds.day(2), 0.1)}
    else:  # cross-day's test day (2), and the many-days protocol's (the last day, 2): the whole day
        regions = {2: np.ones(ds.day(2).n_bins, bool)}
    dirty = poisoned(clean, tmp_path / "P", regions)
    weights_a, results_a = run_captured(monkeypatch, clean, tiny_cfg, name)
    weights_b, results_b = run_captured(monkeypatch, dirty, tiny_cfg, name)
    assert weights_a.keys() == weights_b.keys() == {f"{name}/{m}" for m in MODELS}
    for key in weights_a:
        assert_same_weights(weights_a[key], weights_b[key], f"{protocol}: {key}")
    assert selections(results_a) == selections(results_b)
    if protocol == "cross-day sorted units":  # the read-in was fitted on the calibration slice, left clean
        assert any(k.startswith("days.day002.") for k in weights_a[f"{name}/test-alignnet"])
    diffs = np.abs(np.subtract(scores(results_a), scores(results_b)))
    assert diffs.min() > 1e-3, diffs  # every score read the poisoned bins


def test_poisoning_trains_held_out_block_changes_nothing_it_trained_or_chose(tiny_dataset, tmp_path):
    """`alignnet train` holds out the last 20 % of every day's trials: poisoned, the artifact's weights,
    normalisation, references and validation figures are the same; only the test figures change."""
    clean = tiny_dataset / "D"
    ds = Dataset(clean)
    dirty = poisoned(clean, tmp_path / "P", {d: last_trials(ds.day(d), 0.2) for d in range(len(ds))})
    cfg, path = load_config(str(tiny_dataset / "train.yaml"))
    cfg = apply_overrides(cfg, ["finetune.epochs=3", "finetune.patience=1"])
    runs = [train(copy.deepcopy(cfg), path, data=data, out=tmp_path / f"run{i}") for i, data in
            enumerate((clean, dirty))]
    (ma, ca, fa), (mb, cb, fb) = (load_artifact(r["artifact"]) for r in runs)
    assert_same_weights(ma.state_dict(), mb.state_dict(), "train")
    assert ca.to_dict() == cb.to_dict()  # the normalisation statistics
    for key in ("latent_reference", "channel_reference"):
        assert fa[key] == fb[key], key
    assert without_timing(runs[0]["stages"]) == without_timing(runs[1]["stages"])
    ma_, mb_ = runs[0]["metrics"], runs[1]["metrics"]
    assert {k: v for k, v in ma_.items() if k.startswith("val_")} == {k: v for k, v in mb_.items()
                                                                      if k.startswith("val_")}
    assert abs(ma_["test_s2b_r2"] - mb_["test_s2b_r2"]) > 1e-3  # the held-out block is what the test scores


@pytest.mark.parametrize("protocol", ["single-day", "cross-day"])
def test_poisoning_the_test_data_changes_no_search_score_or_winner(protocol, tiny_dataset, tiny_cfg, tmp_path):
    clean = tiny_dataset / "D"
    ds = Dataset(clean)
    regions = ({0: last_trials(ds.day(0), tiny_cfg.test_fraction)} if protocol == "single-day"
               else {2: np.ones(ds.day(2).n_bins, bool)})
    dirty = poisoned(clean, tmp_path / "P", regions)
    a, b = (search_mod.search(Dataset(d), tiny_cfg, ["test-wiener", "test-gru"], protocol) for d in (clean, dirty))
    assert without_timing(a["rows"]) == without_timing(b["rows"])
    assert without_timing(a["best"]) == without_timing(b["best"])
    assert len(a["rows"]) == len(search_mod.variants("test-wiener", 20)) + len(search_mod.LEARNING_RATES)


def test_poisoning_the_rest_of_a_calibrated_day_changes_nothing_the_read_in_learned(tiny_dataset, tmp_path):
    """`alignnet calibrate --trials N` fits on the day's first N trials and scores the rest: poisoned, the calibrated
    weights are the same and only the score moves."""
    from alignnet.training.calibrate import calibrate

    clean = tiny_dataset / "D"
    ds = Dataset(clean)
    cfg, path = load_config(str(tiny_dataset / "train.yaml"))
    base = train(apply_overrides(cfg, ["train.days=[day000,day001]"]), path, data=clean, out=tmp_path / "run")
    trials = np.unique(ds.day(2).trial_id)
    dirty = poisoned(clean, tmp_path / "P", {2: ~np.isin(ds.day(2).trial_id, trials[:8])})
    reports = [calibrate(base["artifact"], data, 2, tmp_path / f"cal{i}", trials=8, export=False,
                         train={"epochs": 3, "progress": False}) for i, data in enumerate((clean, dirty))]
    ma, mb = (load_artifact(tmp_path / f"cal{i}")[0] for i in range(2))
    assert_same_weights(ma.state_dict(), mb.state_dict(), "calibrate")
    assert without_timing({k: v for k, v in reports[0].items() if not k.startswith("rest_") and k != "data"}) == \
        without_timing({k: v for k, v in reports[1].items() if not k.startswith("rest_") and k != "data"})
    assert abs(reports[0]["rest_r2_after"] - reports[1]["rest_r2_after"]) > 1e-3
