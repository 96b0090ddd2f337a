import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from alignnet.cli.main import main as cli
from alignnet.model import create_model
from alignnet.model.artifacts import load_artifact
from alignnet.model.metrics import pearson, r2
from alignnet.recordings.dataset import Dataset
from alignnet.training.trainer import TrainConfig, Trainer
from alignnet.training.windows import fit_contract, split_trials, windows_in_trials

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_metrics_are_defined_once_and_correctly():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((10, 2, 30))
    assert r2(y, y, 1) == pytest.approx(1.0)
    assert r2(y, np.zeros_like(y) + y.mean(axis=(0, 2), keepdims=True), 1) == pytest.approx(0.0, abs=1e-12)
    from sklearn.metrics import r2_score

    pred = y + 0.5 * rng.standard_normal(y.shape)
    flat = lambda a: a.transpose(0, 2, 1).reshape(-1, 2)  # noqa: E731
    assert r2(y, pred, 1) == pytest.approx(r2_score(flat(y), flat(pred)))
    counts = rng.poisson(2.0, (5, 4, 50)).astype(float)
    counts[:, 3] = 0  # a silent channel is left out of the average
    rates = counts + rng.standard_normal(counts.shape)
    per = [np.corrcoef(counts[:, c].ravel(), rates[:, c].ravel())[0, 1] for c in range(3)]
    assert pearson(counts, rates, 1) == pytest.approx(np.mean(per))


def _tiny_windows(root):
    ds = Dataset(root / "D")
    day = ds.day(0)
    split = split_trials(day, 0.2, 0.2)
    train = [windows_in_trials(day, split["train"], 20, 5, "pos")]
    val = [windows_in_trials(day, split["val"], 20, 5, "pos")]
    test = windows_in_trials(day, split["test"], 20, 20, "pos")
    # no window of one split holds a trial of another
    for a, b in (("train", "test"), ("val", "test"), ("train", "val")):
        assert not set(split[a]) & set(split[b])
    return ds, train, val, test


def test_resume_after_interruption_gives_the_same_weights(tiny_dataset, tmp_path, monkeypatch):
    ds, train, val, _ = _tiny_windows(tiny_dataset)
    contract = fit_contract(ds.contract(window_bins=20), train)
    cfg = TrainConfig(stage="both", epochs=3, batch_size=8, max_steps_per_epoch=5, progress=False, device="cpu")

    torch.manual_seed(0)
    straight = create_model("test-gru")
    Trainer(straight, cfg, run_dir=tmp_path / "a").fit(train, val, contract)

    torch.manual_seed(0)
    interrupted = create_model("test-gru")
    trainer = Trainer(interrupted, cfg, run_dir=tmp_path / "b")
    real_step, calls = Trainer.step_parts, {"n": 0}

    def dying_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 8:  # in the middle of the second epoch
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "step_parts", dying_step)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train, val, contract)
    monkeypatch.setattr(Trainer, "step_parts", real_step)
    assert (tmp_path / "b" / "checkpoint.pt").is_file()

    torch.manual_seed(123)  # a fresh process: nothing but the checkpoint carries state
    resumed = create_model("test-gru")
    Trainer(resumed, cfg, run_dir=tmp_path / "b").fit(train, val, contract, resume=True)
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), f"{k} differs after resume"
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_wiener_fits_through_the_same_trainer(tiny_dataset):
    ds, train, val, test = _tiny_windows(tiny_dataset)
    contract = fit_contract(ds.contract(window_bins=20), train)
    model = create_model("wiener", n_channels=16, window_bins=20, n_lags=3)
    summary = Trainer(model, TrainConfig(stage="both", progress=False)).fit(train, val, contract)
    assert "s2b_alpha" in summary
    with torch.no_grad():
        pred = model.decode(torch.from_numpy(contract.preprocess_spikes(test.counts))).numpy()
    # 16 channels, 14 training trials: better than the mean
    assert r2(contract.preprocess_behavior(test.behavior), pred, 1) > 0.05


def test_tiny_end_to_end_evaluate(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = cli(["evaluate", "--data", str(tiny_dataset / "D"), "--config", str(tiny_dataset / "train.yaml"),
              "--protocol", "all", "--models", "test-wiener,test-gru,test-alignnet", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["protocols"]) == {"single-day", "cross-day", "pretrain"}
    for rows in results["protocols"].values():
        assert [r["model"] for r in rows] == ["test-wiener", "test-gru", "test-alignnet"]
        assert all(np.isfinite(r["s2b_r2"]) and np.isfinite(r["b2s_r"]) for r in rows)
        assert all(np.isfinite(r["online_r2"]) for r in rows)  # newest-bin R² next to the window R²
        assert [r["causal"] for r in rows] == [True, True, False]
        # simulated B->S scored against the true rates and as PSTHs, below the counts' own noise ceiling + slack
        assert all(-1 <= r["rate_r"] <= 1 and -1 <= r["psth_r"] <= 1 for r in rows)
    for p, c in results["ceilings"].items():
        assert 0 < c["rate_r"] < 1 and 0 < c["psth_r"] < 1, (p, c)
    md = (out / "results.md").read_text()
    assert "| Model | causal | single-day S→B R² (window / newest bin) |" in md and "alignnet evaluate" in md
    for fig in ("fig5_trajectories_single-day.png", "fig6_rasters_cross-day.png", "fig7_rate_groups_pretrain.png",
                "fig_r2_vs_days_apart.png", "fig_window_vs_newest_bin.png", "fig8_psth_cross-day.png"):
        assert (out / fig).stat().st_size > 10_000, fig


def test_evaluate_with_seeds_reports_mean_and_sd_and_reuses_finished_seeds(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["evaluate", "--data", str(tiny_dataset / "D"), "--config", str(tiny_dataset / "train.yaml"),
            "--protocol", "cross-day", "--models", "test-wiener,test-gru", "--out", str(out), "--seeds", "2"]
    assert cli(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["seed_runs"] == ["seed-0", "seed-1"]
    per_seed = [json.loads((out / s / "results.json").read_text()) for s in results["seed_runs"]]
    assert [r["config"]["seed"] for r in per_seed] == [0, 1]
    for i, row in enumerate(results["protocols"]["cross-day"]):
        values = [r["protocols"]["cross-day"][i]["online_r2"] for r in per_seed]
        assert row["values"]["online_r2"] == values and row["online_r2"] == pytest.approx(np.mean(values))
        assert row["sd"]["online_r2"] == pytest.approx(np.std(values, ddof=1))
    wiener, gru = results["protocols"]["cross-day"]
    assert wiener["sd"]["s2b_r2"] == 0.0 and gru["sd"]["s2b_r2"] > 0  # closed form vs seeded initialisation
    md = (out / "results.md").read_text()
    assert "Seeds 0, 1" in md and " ± " in md and "(seed-0/results.md)" in md
    assert (out / "fig_window_vs_newest_bin.png").stat().st_size > 10_000
    stamp = (out / "seed-0" / "results.json").stat().st_mtime_ns
    assert cli(args) == 0  # the finished seeds are reused, not trained again
    assert (out / "seed-0" / "results.json").stat().st_mtime_ns == stamp
    assert cli(args[:-1] + ["3"]) == 0  # one more seed: only it runs
    assert (out / "seed-0" / "results.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["seeds"] == [0, 1, 2]
    capsys.readouterr()
    for bad in ("0", "1,1", "-1", "x"):
        with pytest.raises(SystemExit):
            cli(args[:-1] + [bad])
        assert "--seeds" in capsys.readouterr().err


def test_evaluate_compares_the_served_default_and_the_lstm_by_default():
    from alignnet.cli.train import DEFAULT_MODELS

    assert {"alignnet-causal", "lstm", "wiener", "alignnet"} <= set(DEFAULT_MODELS.split(","))


def test_train_writes_a_loadable_artifact(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(out),
                "--set", "finetune.epochs=1"]) == 0
    model, contract, config = load_artifact(out / "artifact")
    assert contract.is_fitted and contract.window_bins == 20
    assert config["provenance"]["days"] == ["day000", "day001", "day002"]
    assert "val_s2b_r2" in config["metrics"]
    assert (out / "config.yaml").is_file() and (out / "pretrain" / "metrics.jsonl").is_file()


def test_torchrun_two_processes_pretrain(tiny_dataset, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    for attempt in range(2):
        out = tmp_path / f"ddp{attempt}"
        proc = subprocess.run(
            [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "alignnet", "train",
             str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(out),
             "--set", "finetune.epochs=1"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        # seen once in a loaded full-suite run: a rank aborting in gloo's teardown ("terminate called without an
        # active exception", SIGABRT) after training; that one known race gets a second try, nothing else does
        if proc.returncode == 0 or "terminate called without an active exception" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (out / "pretrain" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2, "rank 0 alone logs, once per epoch"
    load_artifact(out / "artifact")


def test_fitting_a_read_in_alone_keeps_batch_norm_statistics(tiny_dataset):
    """A new day's read-in is fitted with the rest frozen: weights and batch-norm running statistics alike."""
    from alignnet.training.protocols import EvalConfig, Protocol

    ds = Dataset(tiny_dataset / "D")
    proto = Protocol(ds, EvalConfig(window_bins=20, hop_bins=5, readin={"epochs": 2, "progress": False},
                                    train={"progress": False}))
    calib = proto.windows(2)
    contract = fit_contract(proto.contract(), [calib])
    model = create_model("test-alignnet")
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("days.")}
    proto.new_day_readin(model, calib.day, calib, contract)
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert changed == []
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if k.startswith(f"days.{calib.day}."))


def test_overlapping_windows_are_not_infonce_negatives():
    from alignnet.model.losses import info_nce, overlapping

    torch.manual_seed(0)
    z_a, z_b = torch.randn(4, 8), torch.randn(4, 8)
    starts = torch.tensor([0, 10, 200, 400])  # windows of 100 bins: the first two overlap
    exclude = overlapping(starts, 100)
    assert exclude.tolist()[0] == [True, True, False, False]
    full, _ = info_nce(z_a, z_b, 0.1)
    masked, _ = info_nce(z_a, z_b, 0.1, exclude)
    assert masked < full  # fewer negatives: a lower loss for the same vectors


def test_search_gives_every_model_the_same_variants_and_writes_a_runnable_config(tiny_dataset, tmp_path, capsys):
    import yaml

    from alignnet.training.protocols import EvalConfig
    from alignnet.training.search import LEARNING_RATES

    out = tmp_path / "search"
    assert cli(["search", "--data", str(tiny_dataset / "D"), "--config", str(tiny_dataset / "train.yaml"),
                "--models", "test-wiener,test-gru,test-mlp", "--out", str(out)]) == 0
    result = json.loads((out / "search.json").read_text())
    by_model = {m: [r for r in result["rows"] if r["model"] == m] for m in ("test-wiener", "test-gru", "test-mlp")}
    assert [r["model_train"]["lr"] for r in by_model["test-gru"]] == list(LEARNING_RATES)
    assert [r["model_train"]["lr"] for r in by_model["test-mlp"]] == list(LEARNING_RATES)
    assert [r["models"]["n_lags"] for r in by_model["test-wiener"]] == [2, 5, 10]  # shorter than the window
    for m, rows in by_model.items():  # the winner is the best validation newest-bin R²
        assert result["best"][m]["val_newest_bin_r2"] == max(r["val_newest_bin_r2"] for r in rows)
    cfg = yaml.safe_load((out / "search.yaml").read_text())
    ev = EvalConfig.from_dict(cfg["evaluate"])  # loads as an evaluate config, winners written in
    assert ev.model_train["test-gru"]["lr"] == result["best"]["test-gru"]["model_train"]["lr"]
    assert ev.models["test-wiener"]["n_lags"] == result["best"]["test-wiener"]["models"]["n_lags"]
    assert "**" in (out / "search.md").read_text()


def test_cebra_yardstick_decodes_in_evaluate_and_is_refused_by_train(tiny_dataset, tmp_path, capsys):
    pytest.importorskip("cebra", reason="the CEBRA yardstick is an optional extra: pip install 'alignnet-bci[cebra]'")
    out = tmp_path / "ev"
    assert cli(["evaluate", "--data", str(tiny_dataset / "D"), "--config", str(tiny_dataset / "train.yaml"),
                "--protocol", "single-day", "--models", "test-cebra", "--out", str(out)]) == 0
    (row,) = json.loads((out / "results.json").read_text())["protocols"]["single-day"]
    assert np.isfinite(row["s2b_r2"]) and np.isfinite(row["online_r2"]) and row["s2b_r2"] > -1
    assert row["b2s_r"] is None and row["psth_r"] is None and row["causal"] is False  # decode-only, centred encoder
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"),
                "--out", str(tmp_path / "t"), "--set", "model=test-cebra"]) == 2
    assert "evaluation yardstick" in capsys.readouterr().err
    assert not (tmp_path / "t" / "config.yaml").exists()


def test_set_reads_exponent_floats_as_numbers():
    from alignnet.training.run import apply_overrides

    cfg = apply_overrides({}, ["finetune.lr=1e-4", "name=abc", "days=[0, 1]", "x=2.5", "tag=e"])
    assert cfg == {"finetune": {"lr": 1e-4}, "name": "abc", "days": [0, 1], "x": 2.5, "tag": "e"}


@pytest.mark.parametrize("setting, named", [
    ("pretrain.epoch=3", "unknown pretrain setting(s) epoch"),  # a TypeError deep in the run, once
    ("train.epochs=3", "unknown train setting(s) epochs"),  # once dropped without a word
    ("pretrian.epochs=3", "unknown config section(s) pretrian"),
    ("finetune.seed=3", "seed go in train:"),
    ("train.device=gpu", "unknown device 'gpu'"),
])
def test_train_refuses_a_wrong_setting_by_name_before_writing(tiny_dataset, tmp_path, capsys, setting, named):
    out = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(out),
                "--set", setting]) == 2
    assert named in capsys.readouterr().err and not out.exists()


def test_evaluate_refuses_a_wrong_training_setting_by_name(tiny_dataset, tmp_path, capsys):
    base = ["evaluate", "--data", str(tiny_dataset / "D"), "--config", str(tiny_dataset / "train.yaml"),
            "--protocol", "single-day", "--models", "test-wiener", "--out", str(tmp_path / "ev")]
    for setting, named in (("train.epoch=1", "evaluate.train setting(s) epoch"),
                           ("model_train.test-wiener.lrr=1", "evaluate.model_train.test-wiener setting(s) lrr"),
                           ("readin.device=gpu", "unknown device 'gpu'")):
        assert cli(base + ["--set", setting]) == 2
        assert named in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_evaluation_feeds_a_model_on_its_own_device(monkeypatch):
    """A CPU check for device mix-ups (a GPU run crashed on one: CPU tensors fed to a model on CUDA). On PyTorch's
    'meta' device a model has shapes and no data, and a CPU tensor handed to it raises, as it would on CUDA; the
    numbers that leave the model are faked, since meta tensors hold none."""
    import torch

    import alignnet.model.base as base
    from alignnet.model import DataContract, create_model
    from alignnet.training.run import latent_reference, split_metrics
    from alignnet.training.windows import DayWindows

    real = base.to_numpy
    monkeypatch.setattr(base, "to_numpy", lambda t: np.zeros(t.shape, np.float32) if t.is_meta else real(t))
    rng = np.random.default_rng(0)
    w = DayWindows("d0", rng.poisson(1.0, (6, 16, 20)).astype(np.float32), rng.normal(size=(6, 2, 20)))
    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=20).fit(w.counts, w.behavior)
    model = create_model("test-alignnet").to("meta").eval()
    with pytest.raises(RuntimeError, match="device"):  # the mix-up this test exists to catch
        model.decode(torch.from_numpy(contract.preprocess_spikes(w.counts)), None)
    scores = split_metrics(model, [w], contract, "test")
    assert set(scores) == {"test_s2b_r2", "test_newest_r2", "test_b2s_r"}
    assert latent_reference(model, [w], contract, use_day=False)["n_windows"] == 6
    pred = base.run_batched(model.decode, model, contract.preprocess_spikes(w.counts), None, batch=4)
    assert pred.shape == (6, 2, 20)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                    reason="no CUDA device on this machine (a GPU machine runs it)")
def test_evaluate_runs_on_cuda(tiny_dataset, tmp_path):
    out = tmp_path / "ev"
    assert cli(["evaluate", "--data", str(tiny_dataset / "D"), "--config", str(tiny_dataset / "train.yaml"),
                "--protocol", "single-day", "--models", "test-wiener,test-alignnet", "--out", str(out),
                "--set", "train.device=cuda"]) == 0
    rows = json.loads((out / "results.json").read_text())["protocols"]["single-day"]
    assert all(np.isfinite(r["s2b_r2"]) and np.isfinite(r["online_r2"]) for r in rows)


def test_the_default_config_trains_the_served_default():
    """``alignnet train`` with no config trains what ``alignnet serve`` serves by default (a lab following "Your own
    recording" gets the causal variant, the better one at the newest bin), and the default models are built with
    that config as it is."""
    from alignnet.model.artifacts import read_config
    from alignnet.service.http.settings import DEFAULT_ARTIFACT
    from alignnet.training.run import load_config

    cfg, _ = load_config("quick")
    assert cfg["model"] == read_config(DEFAULT_ARTIFACT)["model"] == "alignnet-causal"
    assert cfg["pretrain"]["lr"] == cfg["finetune"]["lr"] == 0.01  # the search's winner for it
    build = open(os.path.join(REPO, "scripts", "build_default_models.sh")).read()
    line = next(ln for ln in build.splitlines() if "--out runs/quick" in ln)
    assert "--set" not in line, line


def _shipped_alignnets():
    """(config file, section, model name, window bins, its AlignNet config) for every AlignNet a shipped config
    trains: its `train` section's model, and each AlignNet variant `alignnet evaluate` trains by default or the
    config names, with the config's model settings and window (100 bins where the dataset's default applies)."""
    from alignnet.cli.train import DEFAULT_MODELS
    from alignnet.model.registry import model_config
    from alignnet.training.run import CONFIGS, load_config

    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg, _ = load_config(str(path))
        name = cfg.get("model", "alignnet")
        window = int(cfg.get("train", {}).get("window_bins", 100))
        if name.startswith("alignnet"):
            yield path.name, "train", name, window, model_config(name, window_bins=window,
                                                                 **cfg.get("model_config", {}))
        ev = cfg.get("evaluate", {})
        window = int(ev.get("window_bins", 100))
        for m in {*DEFAULT_MODELS.split(","), *ev.get("models", {})}:
            if m.startswith("alignnet"):
                yield path.name, "evaluate", m, window, model_config(m, window_bins=window, **ev.get("models", {})
                                                                     .get(m, {}))


def test_every_shipped_alignnet_keeps_at_least_four_live_latent_columns():
    """The aligned latent can only carry the decode where it has time columns the output reads: at 8-bin windows
    and depth 3 it had one, which the first causal variant's shift turned into zeros. Every shipped config sizes
    window and depth so at least 4 columns reach the output."""
    seen = []
    for file, section, name, window, config in _shipped_alignnets():
        seen.append(file)
        assert config.live_latent_columns >= 4, (
            f"{file} ({section}): {name} at {window}-bin windows and depth {config.depth} keeps "
            f"{config.live_latent_columns} live latent time column(s)")
    assert {"quick.yaml", "chewie.yaml", "paper.yaml"} <= set(seen)
