"""Bring your own recording: recordings of every shape that broke the pipeline before go import -> info -> train ->
evaluate -> export -> serve + replay with the data-derived defaults and no per-dataset overrides.

Each trained model's held-out test R² must reach a ridge decoder fitted on the same split (current bin, the plain
yardstick) minus MARGIN. The budget is the test's (BYOR_CONFIG: the Wiener filter, fitted in closed form, so the
suite stays fast; AlignNet itself where units differ across days, as a closed-form filter cannot train there);
scripts/byor_check.sh runs the same shapes with the default config (AlignNet, configs/quick.yaml) for
docs/results.md.
"""

import json

import numpy as np
import pytest
from lab_recordings import WIENER, make

from alignnet.cli.main import main as cli
from alignnet.model.artifacts import read_config
from alignnet.model.metrics import r2
from alignnet.recordings.dataset import Dataset
from alignnet.recordings.linear import fit_ridge, predict_ridge
from alignnet.training.windows import split_trials

MARGIN = 0.05
ALIGNNET = """
model: test-alignnet
model_config: {}
train: {val_fraction: 0.1, days: all, seed: 0, device: cpu, model_channels: 32}
pretrain: {epochs: 3, batch_size: 32, lr: 0.003, max_steps_per_epoch: 20, progress: false}
finetune: {epochs: 8, batch_size: 32, lr: 0.01, max_steps_per_epoch: 20, progress: false}
evaluate:
  train: {epochs: 2, batch_size: 32, max_steps_per_epoch: 5, progress: false}
  pretrain: {epochs: 1}
  readin: {epochs: 2}
"""


def ridge_on_the_same_split(data, behavior: str) -> float:
    """A current-bin ridge decoder per day, fitted on the train split and scored on the test split (pooled)."""
    ds = Dataset(data)
    window = ds.contract().window_bins
    true, pred = [], []
    for i in range(len(ds)):
        day = ds.day(i)
        split = split_trials(day, 0.2, 0.1, window)
        tr, te = np.isin(day.trial_id, split["train"]), np.isin(day.trial_id, split["test"])
        model = fit_ridge(day.counts[tr].astype(np.float64), day.behavior(behavior)[tr])
        true.append(day.behavior(behavior)[te])
        pred.append(predict_ridge(model, day.counts[te].astype(np.float64)))
    return r2(np.concatenate(true), np.concatenate(pred))


@pytest.mark.parametrize("shape", ["continuous", "one-day", "short-trials", "velocity-only", "unmatched"])
def test_a_recording_of_any_shape_trains_exports_serves_and_replays(shape, tmp_path, capsys):
    pytest.importorskip("pylsl")
    files, behavior = make(shape, tmp_path / "raw")
    data = tmp_path / "D"
    matched = ["--units-matched"] if shape == "short-trials" else []  # an array: the same electrodes every day
    assert cli(["data", "import", *map(str, files), "--out", str(data), "--behavior", behavior, *matched]) == 0
    assert cli(["data", "info", str(data)]) == 0
    info = capsys.readouterr().out
    assert "will use" in info and "window" in info
    ds = Dataset(data)
    if shape == "continuous":
        assert ds.day(0).split_by == "time" and "splits: by time" in info

    config = tmp_path / "config.yaml"
    config.write_text(ALIGNNET if shape == "unmatched" else WIENER)
    run = tmp_path / "run"
    assert cli(["train", str(config), "--data", str(data), "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "held-out test" in printed and "nan" not in printed
    metrics = read_config(run / "artifact")["metrics"]
    ridge = ridge_on_the_same_split(data, behavior)
    assert metrics["test_s2b_r2"] >= ridge - MARGIN, (metrics, ridge)

    assert cli(["evaluate", "--data", str(data), "--config", str(config), "--out", str(tmp_path / "ev"),
                "--models", "wiener"]) == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(results["protocols"]) == ({"single-day", "cross-day"} if len(ds) > 1 else {"single-day"})
    assert all(np.isfinite(r["s2b_r2"]) for rows in results["protocols"].values() for r in rows)

    assert cli(["export", str(run / "artifact"), "--formats", "onnx"]) == 0
    out = tmp_path / "replay.json"
    assert cli(["replay", str(data), "--day", str(len(ds) - 1), "--held-out", "--serve", str(run / "artifact"),
                "--score", "--speed", "20", "--seconds", "12", "--json", str(out)]) == 0
    online = json.loads(out.read_text())
    assert online["matched"] > 0 and np.isfinite(online["r2"]), online
