"""FALCON: a synthetic M2 session in FALCON's file layout, imported with FALCON's own loader, trained on, and scored
by FALCON's own evaluator through ``FalconDecoder`` (one prediction per 20-ms bin, batched across sessions)."""

import json

import numpy as np
import pytest
from lab_recordings import WIENER, spikes, velocity_trials

pytest.importorskip("falcon_challenge.evaluator", reason="falcon-challenge is not installed (scripts/setup.sh)")

from alignnet.cli.main import main as cli  # noqa: E402
from alignnet.recordings.falcon import m2_name, write_falcon_m2  # noqa: E402

# FALCON M2's held-in sessions (its minival phase wants every one): (date, run)
HELD_IN = [("2020-10-19", 1), ("2020-10-19", 2), ("2020-10-20", 1), ("2020-10-20", 2), ("2020-10-27", 1),
           ("2020-10-27", 2), ("2020-10-28", 1)]
def session(rng, pd, trials, gain=1.0):
    vel, trial, _ = velocity_trials(rng, trials, 25, 0.02)
    return spikes(rng, vel * gain, 96, 0.02, pd=pd), vel, trial


@pytest.fixture(scope="module")
def falcon_m2(tmp_path_factory):
    """FALCON's folder layout: held-in training files (what a lab trains on) and the minival files of every
    held-in session; the same 96 electrodes (tuning) throughout."""
    root = tmp_path_factory.mktemp("falcon")
    rng = np.random.default_rng(3)
    pd = rng.uniform(0, 2 * np.pi, 96)
    train = []
    for date, run in HELD_IN[:3]:
        name = m2_name(date, run, "held-in-calib")
        train.append(write_falcon_m2(root / "m2" / "held_in_calib" / name, *session(rng, pd, 60)))
    for date, run in HELD_IN:
        name = m2_name(date, run, "held-in-minival")
        write_falcon_m2(root / "m2" / "minival" / name, *session(rng, pd, 6))
    return root, train


def test_falcon_files_import_with_falcons_loader(falcon_m2, tmp_path):
    from falcon_challenge.config import FalconTask
    from falcon_challenge.dataloaders import load_nwb

    from alignnet.recordings.dataset import Dataset

    root, train = falcon_m2
    assert cli(["data", "import", *map(str, train), "--format", "falcon-m2", "--out", str(tmp_path / "D"),
                "--behavior", "vel", "--units-matched"]) == 0
    day = Dataset(tmp_path / "D").day(0)
    counts, vel, trial_change, _ = load_nwb(train[0], dataset=FalconTask.m2)
    np.testing.assert_array_equal(day.counts, counts)
    np.testing.assert_allclose(day.vel, vel, atol=1e-6)
    # trials from FALCON's trial changes
    assert day.n_channels == 96 and day.bin_s == 0.02 and len(np.unique(day.trial_id)) == 60


def test_falcon_evaluator_scores_a_trained_artifact_per_bin(falcon_m2, tmp_path):
    from falcon_challenge.config import FalconConfig, FalconTask

    from alignnet.clients.falcon import FalconDecoder

    root, train = falcon_m2
    data = tmp_path / "D"
    assert cli(["data", "import", *map(str, train), "--format", "falcon-m2", "--out", str(data), "--behavior", "vel",
                "--units-matched", "--window-bins", "20"]) == 0
    (tmp_path / "wiener.yaml").write_text(WIENER)
    assert cli(["train", str(tmp_path / "wiener.yaml"), "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    artifact = tmp_path / "run" / "artifact"
    assert cli(["export", str(artifact), "--formats", "onnx"]) == 0

    out = tmp_path / "falcon.json"
    assert cli(["falcon", str(artifact), "--split", "m2", "--data", str(root), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    scores = result["scores"]
    assert scores["Held In R2 Mean"] > 0.5, scores  # FALCON's R² over its 7 held-in sessions
    assert 0 < scores["Normalized Latency"] < 1  # compute time / recorded time: faster than real time
    lat = result["per_bin_latency_ms"]
    assert lat["bins"] >= 6 * 25 and 0 < lat["p99"] < 50, lat

    # the interface itself: contract checks and one ring per session
    with pytest.raises(ValueError, match="reads 96 channels, FALCON m1 gives 64"):
        FalconDecoder(FalconConfig(task=FalconTask.m1), artifact)
    dec = FalconDecoder(FalconConfig(task=FalconTask.m2), artifact, batch_size=2)
    dec.reset(["a_1", "b_2"])
    x = np.zeros((2, 96), np.float32)
    x[0] = 5
    y = dec.predict(x)
    assert y.shape == (2, 2) and not np.allclose(y[0], y[1])
    assert dec.ring[1].sum() == 0 and dec.ring[0, :, -1].sum() == 5 * 96


def test_held_out_sessions_are_calibrated_through_the_new_day_path(falcon_m2, tmp_path):
    """An AlignNet artifact calibrated on a held-out session's FALCON calibration file serves that session only."""
    import torch
    from falcon_challenge.config import FalconConfig, FalconTask

    from alignnet.clients.falcon import FalconDecoder
    from alignnet.model import DataContract, create_model
    from alignnet.model.artifacts import save_artifact
    from alignnet.training.export import export_artifact

    root, _ = falcon_m2
    torch.manual_seed(0)
    model = create_model("test-alignnet", n_channels=96).eval()
    contract = DataContract(n_channels=96, bin_s=0.02, window_bins=20, spike_scale=[0.7] * 96,
                            behavior_mean=[0.0, 0.0], behavior_std=[1.0, 1.0], behavior_kind="vel")
    save_artifact(tmp_path / "base", model, contract)
    export_artifact(tmp_path / "base", ("onnx",))
    rng = np.random.default_rng(5)
    calib = write_falcon_m2(tmp_path / "m2" / "held_out_calib" / m2_name("2020-10-30", 1, "held-out-calib"),
                            *session(rng, rng.uniform(0, 2 * np.pi, 96), 12))
    dec = FalconDecoder(FalconConfig(task=FalconTask.m2), tmp_path / "base", batch_size=2)
    reports = dec.calibrate([calib], tmp_path / "calibrated", train={"epochs": 1, "max_steps_per_epoch": 2})
    assert set(reports) == {"Run1_20201030"} and reports["Run1_20201030"]["mode"] == "few-shot"
    dec.reset([tmp_path / "sub-MonkeyN-held-out-eval_ses-2020-10-30-Run1_behavior+ecephys.nwb",
               root / "m2" / "minival" / "sub-MonkeyN-held-in-minival_ses-2020-10-19-Run1_behavior+ecephys.nwb"])
    assert dec.active[0] is dec.calibrated["Run1_20201030"] and dec.active[1] is dec.base
    x = np.tile(rng.poisson(1.0, (1, 96)).astype(np.float32), (2, 1))
    y = dec.predict(x)
    assert not np.allclose(y[0], y[1])  # the same spikes, two artifacts
    with pytest.raises(ValueError, match=r"predict takes \(batch <= 2, 96\)"):
        dec.predict(np.zeros((2, 95), np.float32))
