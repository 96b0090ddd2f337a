"""The parts of AlignNet's training an ablation takes out, the probes of what its decode reads, and the ablation
command that reports them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignnet.cli.main import main as cli
from alignnet.model import create_model
from alignnet.model.losses import pretrain_loss
from alignnet.training.ablate import VARIANTS, summarise, variant_config
from alignnet.training.probes import probing
from alignnet.training.protocols import EvalConfig
from alignnet.training.seeds import same_request


@pytest.fixture
def model_and_batch():
    torch.manual_seed(0)
    model = create_model("test-alignnet-causal").eval()
    spikes = torch.rand(3, 16, 20)
    behavior = torch.randn(3, 2, 20)
    return model, spikes, behavior


def test_cross_modal_outputs_are_the_served_decode_and_simulate(model_and_batch):
    model, spikes, behavior = model_and_batch
    with torch.no_grad():
        out = model.pretrain_outputs(spikes, behavior, cross_modal=True)
        assert "behavior_from_spikes" not in model.pretrain_outputs(spikes, behavior)
        torch.testing.assert_close(out["behavior_from_spikes"], model.decode(spikes))
        torch.testing.assert_close(out["spikes_from_behavior"], model.simulate(behavior))


def test_the_cross_modal_weight_trains_the_served_decode_path(model_and_batch):
    model, spikes, behavior = model_and_batch
    out = model.pretrain_outputs(spikes, behavior, cross_modal=True)
    base, _ = pretrain_loss(out, spikes, behavior, 0.1)
    loss, parts = pretrain_loss(out, spikes, behavior, 0.1, cross_modal_weight=0.5)
    expect = base + 0.5 * (torch.nn.functional.mse_loss(model.decode(spikes), behavior)
                           + torch.nn.functional.mse_loss(model.simulate(behavior), spikes))
    torch.testing.assert_close(loss, expect)
    assert {"decode_mse", "simulate_mse"} <= set(parts)
    # the behavior decoder's error reaches the spike encoder's input map through the served path
    spike_in = [p for n, p in model.named_parameters() if n.startswith("spike_in.")]
    decode_only = torch.nn.functional.mse_loss(out["behavior_from_spikes"], behavior)
    grads = torch.autograd.grad(decode_only, spike_in, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="cross-modal outputs"):
        pretrain_loss(model.pretrain_outputs(spikes, behavior), spikes, behavior, 0.1, cross_modal_weight=1.0)


def test_probes_take_out_what_they_name_and_are_cleared(model_and_batch):
    model, spikes, _ = model_and_batch
    other = torch.rand(3, 16, 20)
    with torch.no_grad():
        before = model.decode(spikes)
        latent = model.latent_map(spikes).mean(0)
        with probing(model, "latent-mean", latent):
            with probing(model, "skips-zero"):  # latent fixed and skips zeroed: the input no longer reaches it
                torch.testing.assert_close(model.decode(spikes), model.decode(other))
        assert model.latent_override is None and not model.zero_skips
        with probing(model, "latent-mean", torch.ones_like(latent)):  # the decode reads the latent it is given
            assert not torch.allclose(model.decode(spikes), before)
        torch.testing.assert_close(model.decode(spikes), before)
        with probing(model, "skips-zero"):
            assert not torch.allclose(model.decode(spikes), before)
    with pytest.raises(ValueError, match="unknown probe"):
        EvalConfig.from_dict({"probes": ["latent-median"]})
    with pytest.raises(ValueError, match="mean latent"):
        with probing(model, "latent-mean"):
            pass


def test_variants_take_out_one_part_each():
    cfg = {"pretrain": {"epochs": 4, "max_steps_per_epoch": 30}}
    full = variant_config(cfg, "full")
    assert full["pretrain"] == {"epochs": 4, "max_steps_per_epoch": 30, "contrastive_weight": 1.0,
                                "cross_modal_weight": 1.0} and full["probes"] == ["latent-mean", "skips-zero"]
    assert variant_config(cfg, "no-contrastive")["pretrain"]["contrastive_weight"] == 0.0
    assert variant_config(cfg, "no-cross-modal")["pretrain"]["cross_modal_weight"] == 0.0
    assert variant_config(cfg, "no-pretraining")["pretrain"]["epochs"] == 0
    dropout = variant_config(cfg, "skip-dropout", "test-alignnet")
    assert dropout["models"] == {"test-alignnet": {"skip_dropout": 0.5}} and "probes" in dropout
    assert dropout["pretrain"] == full["pretrain"]  # "as full": the addition is the only difference
    assert cfg == {"pretrain": {"epochs": 4, "max_steps_per_epoch": 30}}  # the caller's config is not changed
    for v in VARIANTS:
        EvalConfig.from_dict(variant_config(cfg, v))
    with pytest.raises(ValueError, match="unknown ablation variant"):
        variant_config(cfg, "no-everything")


def test_a_no_op_pretraining_setting_is_the_same_request():
    """A finished run is reused when only a no-op setting differs (a pretraining weight given at the value it has
    anyway), and rerun for any setting that changes what trains."""
    def req(pretrain, train=None, model_train=None):
        return {"config": {"seed": 0, "train": train or {}, "pretrain": pretrain, "model_train": model_train or {}},
                "data": "/d", "protocols": ["cross-day"], "models": ["alignnet-causal"]}

    plain = req({"epochs": 4})
    assert same_request(plain, req({"epochs": 4, "contrastive_weight": 1.0, "cross_modal_weight": 0.0}))
    assert not same_request(plain, req({"epochs": 4, "contrastive_weight": 0.5}))
    assert not same_request(plain, req({"epochs": 4, "cross_modal_weight": 1.0}))
    # the training section's value is what pretraining would have: 1.0 there overrides its 0.5
    assert not same_request(req({"epochs": 4}, {"contrastive_weight": 0.5}),
                            req({"epochs": 4, "contrastive_weight": 1.0}, {"contrastive_weight": 0.5}))
    assert same_request(req({"epochs": 4}, {"lr": 0.01}), req({"epochs": 4, "lr": 0.01}, {"lr": 0.01}))
    assert not same_request(plain, {**plain, "data": "/other"})


def test_differences_are_paired_by_seed():
    scores = {"full": {"newest": [0.5, 0.7, 0.6], "window": [0.4, 0.6, 0.5], "train_s": [10, 10, 10]},
              "no-pretraining": {"newest": [0.45, 0.65, 0.55], "window": [0.3, 0.5, 0.4], "train_s": [5, 5, 5]},
              "no-pretraining / skips-zero": {"newest": [0.1, 0.3, 0.2], "window": [None] * 3, "train_s": [0] * 3}}
    full, ablated, probe = summarise(scores)
    assert probe["against"] == "no-pretraining" and probe["delta"] == pytest.approx(-0.35)
    assert full["newest_r2"] == pytest.approx(0.6) and full["newest_sd"] == pytest.approx(0.1)
    # the seeds' spread is 0.1, but every seed loses exactly 0.05: the paired difference has no spread
    assert ablated["delta"] == pytest.approx(-0.05) and ablated["delta_sd"] == pytest.approx(0.0, abs=1e-12)


def test_ablate_command_runs_every_variant_and_probe_and_reuses_finished_runs(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "ab"
    args = ["ablate", "--data", str(tiny_dataset / "D"), "--config", str(tiny_dataset / "train.yaml"),
            "--protocol", "single-day", "--model", "test-alignnet-causal", "--variants", "full,no-pretraining",
            "--seeds", "2", "--out", str(out)]
    assert cli(args) == 0
    result = json.loads((out / "ablation.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"full", "full / latent-mean", "full / skips-zero", "no-pretraining"}
    assert rows["full / latent-mean"]["against"] == "full"
    for name in ("full", "no-pretraining"):
        per_seed = [json.loads((out / name / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
        values = [r["protocols"]["single-day"][0]["online_r2"] for r in per_seed]
        assert rows[name]["values"] == pytest.approx(values) and np.isfinite(values).all()
    assert rows["no-pretraining"]["train_s"] < rows["full"]["train_s"]
    md = (out / "ablation.md").read_text()
    assert "| no-pretraining | fine-tuning alone |" in md and "full: replacing the latent by its mean costs" in md
    assert (out / "fig_ablation.png").stat().st_size > 5_000
    stamp = (out / "full" / "seed-0" / "results.json").stat().st_mtime_ns
    assert cli(args) == 0  # finished runs are reused
    assert (out / "full" / "seed-0" / "results.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert cli(args[:-2] + ["--model", "test-gru", "--out", str(tmp_path / "x")]) != 0
    assert "no pretraining to ablate" in capsys.readouterr().err


def test_skip_dropout_zeroes_whole_levels_per_window_in_training_only():
    torch.manual_seed(0)
    model = create_model("test-alignnet-causal", skip_dropout=0.5)
    skips = [torch.ones(2, 64, 4, 8, 10), torch.ones(2, 64, 8, 4, 5)]
    model.train()
    dropped = model._drop_skips(skips)
    for s in dropped:
        per_window = s.flatten(2).mean(2)  # (Ts, B): each window's level is all kept or all zero, at every step
        assert set(per_window.unique().tolist()) == {0.0, 1.0}
        assert (per_window[0] == per_window[1]).all()
        assert 0.2 < per_window[0].mean() < 0.8
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(model._drop_skips(skips), skips))
    with pytest.raises(ValueError, match="skip_dropout"):
        create_model("test-alignnet", skip_dropout=1.0)


def test_pretraining_selects_its_checkpoint_on_the_served_decode_when_asked(tiny_dataset):
    from alignnet.training.trainer import TrainConfig, Trainer
    from alignnet.training.windows import fit_contract
    from tests.test_training import _tiny_windows

    ds, train, val, _ = _tiny_windows(tiny_dataset)
    contract = fit_contract(ds.contract(window_bins=20), train)
    cfg = dict(stage="pretrain", epochs=3, batch_size=8, max_steps_per_epoch=3, progress=False, device="cpu",
               cross_modal_weight=1.0)
    torch.manual_seed(0)
    trainer = Trainer(create_model("test-alignnet-causal"), TrainConfig(**cfg, select_on="decode_mse"))
    summary = trainer.fit(train, val, contract)
    decode = [row["val_decode_mse"] for row in trainer.history]
    assert summary["best_val_loss"] == pytest.approx(min(decode))  # chosen on the decode, not the whole loss
    assert all(row["val_loss"] > row["val_decode_mse"] for row in trainer.history)
    trainer = Trainer(create_model("test-alignnet-causal"), TrainConfig(**{**cfg, "cross_modal_weight": 0.0},
                                                                        select_on="decode_mse"))
    with pytest.raises(ValueError, match="select_on 'decode_mse' is not a loss part .*infonce"):
        trainer.fit(train, val, contract)
