"""``alignnet train --model auto``: the candidates trained on the same split and budget, the best newest-bin R² on
validation trials served, and the table it was chosen from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignnet.cli.main import main as cli
from alignnet.model.artifacts import read_config
from alignnet.recordings.dataset import DataError
from alignnet.training.auto import candidate_config, train_auto


def fake_train(scores: dict[str, float | None], seen: list):
    """A stand-in for training.run.train: writes an artifact naming its model, with the given validation score."""

    def train(cfg, config_path, *, out, **kw):
        seen.append((cfg, kw))
        (out / "artifact").mkdir(parents=True)
        (out / "artifact" / "config.json").write_text(json.dumps({"model": cfg["model"]}))
        s = scores[cfg["model"]]
        return {"artifact": out / "artifact", "stages": {"finetune": {"epochs": 2}},
                "metrics": {"val_newest_r2": s, "val_s2b_r2": s, "test_newest_r2": 0.0}}

    return train


def test_the_best_validation_newest_bin_is_served(tmp_path):
    seen: list = []
    cfg = {"model": "alignnet-causal", "model_config": {"widths": [4, 8, 16]}, "finetune": {"epochs": 2},
           "evaluate": {"models": {"lstm": {"hidden": 32}}}}
    scores = {"alignnet-causal": 0.41, "lstm": 0.57, "wiener": None}
    result = train_auto(cfg, Path("quick.yaml"), candidates=["alignnet-causal", "lstm", "wiener"], out=tmp_path,
                        train_fn=fake_train(scores, seen), data=Path("D"))
    assert result["winner"] == "lstm"
    assert json.loads((tmp_path / "artifact" / "config.json").read_text())["model"] == "lstm"
    assert json.loads((tmp_path / "auto.json").read_text())["winner"] == "lstm"
    assert "| lstm | 0.570 |" in result["table"] and "**yes**" in result["table"].splitlines()[3]
    # the same budget and data for all; each model's own settings
    assert all(c["finetune"] == {"epochs": 2} and kw == {"data": Path("D")} for c, kw in seen)
    assert [c["model_config"] for c, _ in seen] == [{"widths": [4, 8, 16]}, {"hidden": 32}, {}]
    # chosen again, where AlignNet wins: the served folder is replaced whole
    result = train_auto(cfg, Path("quick.yaml"), candidates=["alignnet-causal", "lstm"], out=tmp_path / "again",
                        train_fn=fake_train({**scores, "alignnet-causal": 0.9}, []))
    assert result["winner"] == "alignnet-causal"


def test_no_scorable_candidate_and_yardsticks_are_refused(tmp_path):
    with pytest.raises(DataError, match="no candidate could be scored"):
        train_auto({}, Path("q.yaml"), candidates=["wiener"], out=tmp_path, train_fn=fake_train({"wiener": None}, []))
    with pytest.raises(DataError, match="names no model"):
        train_auto({}, Path("q.yaml"), candidates=[], out=tmp_path, train_fn=fake_train({}, []))
    with pytest.raises(DataError, match="yardstick"):
        candidate_config({}, "cebra")
    with pytest.raises(ValueError, match="unknown model"):
        candidate_config({}, "no-such-model")


def test_train_auto_on_a_dataset(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--model", "auto", "--candidates", "test-alignnet,wiener,mlp"]) == 0
    printed = capsys.readouterr().out
    chosen = json.loads((run / "auto.json").read_text())
    rows = chosen["candidates"]
    assert [r["model"] for r in rows] == ["test-alignnet", "wiener", "mlp"]
    best = max(rows, key=lambda r: r["val_newest_r2"])
    assert chosen["winner"] == best["model"] == read_config(run / "artifact")["model"]
    winner_weights = run / "candidates" / best["model"] / "artifact" / "model.safetensors"
    assert (run / "artifact" / "model.safetensors").read_bytes() == winner_weights.read_bytes()
    assert "| wiener |" in printed and f"served: {best['model']}" in printed
    assert cli(["export", str(run / "artifact"), "--formats", "onnx"]) == 0  # the served folder exports as any


def test_train_model_picks_one_model_with_its_evaluation_settings(tiny_dataset, tmp_path):
    run = tmp_path / "mlp"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--model", "mlp"]) == 0
    assert read_config(run / "artifact")["model"] == "mlp"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--model", "no-such-model"]) != 0
