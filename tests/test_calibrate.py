"""A new recording day: training on days whose units differ, and few-shot / zero-label calibration of a read-in."""

import json

import numpy as np
import pytest

from alignnet.cli.main import main as cli
from alignnet.model.artifacts import read_config
from alignnet.recordings.dataset import Dataset, Day, write_dataset
from alignnet.service.engines import load_engine


def _unmatched(tiny_dataset, tmp_path):
    """The tiny dataset with every day keeping a different subset of its channels (sorted units differ by day)."""
    ds = Dataset(tiny_dataset / "D")
    keep = [np.arange(16), np.arange(2, 16), np.r_[0:6, 8:16]]
    days = []
    for k, d in enumerate(ds.day(i) for i in range(len(ds))):
        days.append(Day(d.name, d.bin_s, d.counts[:, keep[k]], d.pos, d.vel, d.trial_id, d.segment_id, d.target,
                        d.time_s))
    write_dataset(tmp_path / "U", days, subject="tiny", source="test", contract=ds.contract(), units_matched=False,
                  extra={"default_hop_bins": 10})
    return tmp_path / "U", [len(k) for k in keep]


def test_train_on_unmatched_days_carries_every_read_in_and_serves_the_last(tiny_dataset, tmp_path):
    data, channels = _unmatched(tiny_dataset, tmp_path)
    out = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(data), "--out", str(out),
                "--set", "train.model_channels=16"]) == 0
    config = read_config(out / "artifact")
    assert config["days"] == {"day000": 16, "day001": 14, "day002": 14}
    assert config["served_day"] == "day002" and config["contract"]["n_channels"] == 14
    assert config["model_contract"]["units_matched"] is False
    assert len(config["latent_reference"]["mean"]) == len(config["latent_reference"]["cov"])
    assert cli(["export", str(out / "artifact"), "--formats", "onnx"]) == 0
    eager, onnx = load_engine(out / "artifact", "eager"), load_engine(out / "artifact", "onnx")
    counts = np.random.default_rng(0).poisson(0.5, (3, 14, 20)).astype(np.float32)
    np.testing.assert_allclose(onnx.decode(counts), eager.decode(counts), atol=1e-4)
    with pytest.raises(ValueError, match="14"):
        onnx.decode(np.zeros((1, 16, 20), np.float32))  # the served day's own channel count, checked


def test_calibrate_a_new_day_of_sorted_units_writes_a_servable_artifact(tiny_dataset, tmp_path, capsys):
    data, channels = _unmatched(tiny_dataset, tmp_path)
    run = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(data), "--out", str(run),
                "--set", "train.model_channels=16", "--set", "train.days=[day000,day001]"]) == 0
    out = tmp_path / "cal"
    args = ["calibrate", str(run / "artifact"), str(data), "--day", "day002", "--out", str(out), "--trials", "12",
            "--set", "epochs=3", "--set", "progress=false"]
    assert cli(args + ["--zero-label"]) == 2  # sorted units of a new day match no training channel: refused
    assert "matched channels" in capsys.readouterr().err and not out.exists()
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "few-shot" in printed and "R² on the rest of the day" in printed
    config = read_config(out)
    assert config["served_day"] == "cal_day002" and config["contract"]["n_channels"] == channels[2]
    assert config["metrics"]["calibration"]["trials"] == 12
    base = read_config(run / "artifact")
    assert "cal_day002" not in base["days"]  # the base artifact is untouched
    engine = load_engine(out, "onnx")
    counts = np.random.default_rng(1).poisson(0.5, (2, channels[2], 20)).astype(np.float32)
    assert np.isfinite(engine.decode(counts)).all()


def test_zero_label_calibration_maps_each_channel_back_to_its_training_statistics(tiny_dataset, tmp_path):
    """Matched channels whose gain and baseline changed overnight: the zero-label read-in is the per-channel affine
    map that restores each model input channel's training mean and standard deviation."""
    import torch

    from alignnet.model.artifacts import load_artifact, model_contract
    from alignnet.training.calibrate import block_windows, fit_readin

    run = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--set", "train.days=[0,1]"]) == 0
    model, _, config = load_artifact(run / "artifact")
    ref = config["channel_reference"]
    mc = model_contract(config)
    assert len(ref["mean"]) == len(ref["std"]) == mc.n_channels == 16
    day = Dataset(tiny_dataset / "D").day(2)
    counts = day.counts[:400].T.astype(np.float32)
    counts = np.round(counts * np.linspace(0.5, 2.0, 16)[:, None] + (np.arange(16) % 3)[:, None])  # gains, baselines
    counts[5] = 0  # a channel that went silent
    w = block_windows(counts, np.zeros((2, counts.shape[1]), np.float32), mc.window_bins, "cal_d2")
    fit = fit_readin(model, config, "cal_d2", w, zero_label=True)
    assert fit["method"] == "channel statistics"
    with torch.no_grad():
        x = model.days["cal_d2"].read_in(torch.from_numpy(mc.preprocess_spikes(w.counts))).numpy()
    flat = x.transpose(1, 0, 2).reshape(16, -1)
    live = np.arange(16) != 5
    np.testing.assert_allclose(flat.mean(1), ref["mean"], atol=1e-4)
    np.testing.assert_allclose(flat.std(1)[live], np.asarray(ref["std"])[live], rtol=1e-3)
    weight = model.days["cal_d2"].read_in.weight[:, :, 0].detach().numpy()
    assert np.count_nonzero(weight - np.diag(np.diag(weight))) == 0 and weight[5, 5] == 0  # no mixing; silent: mean


def test_calibration_input_errors_are_clear(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run)]) == 0
    art = str(run / "artifact")
    assert cli(["calibrate", art, str(tiny_dataset / "D"), "--out", str(tmp_path / "c"), "--seconds", "0"]) == 2
    assert "calibration slice" in capsys.readouterr().err
    data, _ = _unmatched(tiny_dataset, tmp_path)
    assert cli(["calibrate", art, str(data), "--day", "day001", "--out", str(tmp_path / "c"), "--trials", "8"]) == 2
    assert "14 channels" in capsys.readouterr().err  # matched model, day with other channels
    assert cli(["calibrate", art, str(tiny_dataset / "D"), "--day", "nope", "--out", str(tmp_path / "c")]) == 2
    assert "no day named" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    base = ["calibrate", art, str(tiny_dataset / "D"), "--day", "2", "--out", str(tmp_path / "c"), "--trials", "8"]
    assert cli(base + ["--set", "epoch=3"]) == 2  # a misspelt setting: named, with the list of settings
    err = capsys.readouterr().err
    assert "unknown calibration setting(s) epoch" in err and "epochs" in err and "Traceback" not in err
    assert cli(base + ["--set", "device=gpu0"]) == 2
    assert "unknown device 'gpu0'" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():  # once silently fitted on the CPU
        assert cli(base + ["--set", "device=cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                    reason="no CUDA device on this machine (a GPU machine runs it)")
def test_calibrate_fits_on_cuda_and_writes_a_cpu_artifact(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--set", "train.days=[0,1]", "--device", "cuda"]) == 0
    out = tmp_path / "cal"
    assert cli(["calibrate", str(run / "artifact"), str(tiny_dataset / "D"), "--day", "2", "--out", str(out),
                "--trials", "10", "--set", "epochs=2", "--set", "device=cuda", "--set", "progress=false"]) == 0
    counts = np.random.default_rng(0).poisson(0.5, (2, 16, 20)).astype(np.float32)
    np.testing.assert_allclose(load_engine(out, "onnx").decode(counts), load_engine(out, "eager").decode(counts),
                               atol=1e-4)


def test_matched_model_calibration_starts_from_the_identity(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--set", "train.days=[0,1]"]) == 0
    out = tmp_path / "cal"
    assert cli(["calibrate", str(run / "artifact"), str(tiny_dataset / "D"), "--day", "2", "--out", str(out),
                "--trials", "10", "--set", "epochs=1", "--set", "lr=1e-9", "--set", "progress=false"]) == 0
    report = json.loads((out / "config.json").read_text())["metrics"]["calibration"]
    # a learning rate of ~0 leaves the identity read-in: the calibrated model decodes as the base does
    assert report["rest_r2_after"] == pytest.approx(report["rest_r2_before"], abs=1e-4)


def test_w2_by_eigensolver_equals_the_matrix_square_root_formula():
    """gaussian_w2 takes roots of symmetric matrices by eigh; it must equal the textbook formula with scipy's
    general matrix square root, also where one covariance is singular (fewer windows than dimensions)."""
    from scipy import linalg

    from alignnet.model.drift import gaussian_w2

    rng = np.random.default_rng(0)
    for n_b in (200, 20):
        a, b = np.cov(rng.standard_normal((300, 16)).T), np.cov((rng.standard_normal((n_b, 16)) * 1.5 + 0.2).T)
        ma, mb = rng.standard_normal(16), rng.standard_normal(16)
        root = np.real(linalg.sqrtm(linalg.sqrtm(a) @ b @ linalg.sqrtm(a)))
        want = np.sum((ma - mb) ** 2) + np.trace(a + b - 2 * root)
        assert gaussian_w2(ma, a, mb, b) == pytest.approx(want, rel=1e-6)


def test_drift_gauge_is_zero_for_the_reference_and_grows_with_a_shift():
    from alignnet.model.drift import ADVISE_RECALIBRATION, drift_gauge

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2000, 6)) @ rng.standard_normal((6, 6))
    reference = {"mean": ref.mean(0), "cov": np.cov(ref.T)}
    assert drift_gauge(reference, ref) == pytest.approx(0.0, abs=1e-6)
    same = rng.standard_normal((500, 6)) @ np.linalg.cholesky(reference["cov"]).T + reference["mean"]
    assert drift_gauge(reference, same) < 0.1 < ADVISE_RECALIBRATION
    moved = same + 1.5 * np.sqrt(np.trace(reference["cov"]) / 6)
    assert drift_gauge(reference, moved) > ADVISE_RECALIBRATION
    with pytest.raises(ValueError, match="dimensions"):
        drift_gauge(reference, same[:, :4])


def test_drift_command_measures_every_day(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--set", "train.days=[0]"]) == 0
    assert cli(["drift", str(run / "artifact"), str(tiny_dataset / "D"), "--figure", str(tmp_path / "d.png"),
                "--json", str(tmp_path / "d.json")]) == 0
    rows = json.loads((tmp_path / "d.json").read_text())
    assert [r["day"] for r in rows] == ["day000", "day001", "day002"]
    assert all(r["gauge"] >= 0 and np.isfinite(r["r2"]) for r in rows)
    assert (tmp_path / "d.png").stat().st_size > 10_000


def test_post_calibrate_swaps_in_a_calibrated_model_and_survives_a_restart(tiny_dataset, tmp_path):
    from conftest import service_client

    from alignnet.service.http.app import create_app
    from alignnet.service.http.settings import Settings

    run = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--set", "train.days=[0,1]"]) == 0
    assert cli(["export", str(run / "artifact"), "--formats", "onnx"]) == 0
    day = Dataset(tiny_dataset / "D").day(2)
    counts, beh = day.counts[:200].T.astype(float), day.pos[:200].T.astype(float)
    settings = dict(artifact=run / "artifact", calibration_dir=tmp_path / "cal")
    with service_client(create_app(Settings(**settings))) as client:
        bad = [({"day": "d2", "spikes": counts[:15].tolist()}, "16 matched channels"),
               ({"day": "d2", "spikes": counts[:, :30].tolist()}, "too few"),
               ({"day": "d2", "spikes": (-counts).tolist()}, "non-negative"),
               ({"day": "d2", "spikes": counts.tolist(), "behavior": beh[:, :199].tolist()}, "behavior must be"),
               ({"day": "../x", "spikes": counts.tolist()}, "day must be")]
        for body, expect in bad:
            r = client.post("/calibrate", json=body)
            assert r.status_code == 422 and expect in r.json()["detail"], (expect, r.json())
        assert client.get("/model").json()["artifact"] == "artifact"  # untouched
        r = client.post("/calibrate", json={"day": "d2", "spikes": counts.tolist(), "behavior": beh.tolist()})
        assert r.status_code == 202 and r.json()["state"] == "running"
        status = client.app.state.alignnet.calibrator.wait(300)
        assert status["state"] == "done", status
        assert client.get("/health").json()["calibration"]["state"] == "done"
        assert client.get("/model").json()["artifact"].startswith("d2-")
        r = client.post("/decode", json={"spikes": counts[:, :20].tolist()})
        assert r.status_code == 200
    with service_client(create_app(Settings(**settings))) as client:  # a restart serves the calibrated day again
        assert client.get("/model").json()["artifact"].startswith("d2-")
    from alignnet.model.artifacts import read_config, write_config

    config = read_config(run / "artifact")  # the base changes (re-trained, re-exported): its old calibration is stale
    config["provenance"]["note"] = "re-trained"
    write_config(run / "artifact", config)
    with service_client(create_app(Settings(**settings))) as client:
        assert client.get("/model").json()["artifact"] == "artifact"


def test_post_calibrate_failure_keeps_the_serving_model(service_artifacts, tmp_path, monkeypatch):
    from conftest import service_client

    from alignnet.service.http.app import create_app
    from alignnet.service.http.settings import Settings

    def fails(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("alignnet.training.calibrate.calibrate_block", fails)
    counts = np.random.default_rng(0).poisson(0.5, (16, 120)).astype(float)
    beh = np.random.default_rng(1).standard_normal((2, 120))
    with service_client(create_app(Settings(artifact=service_artifacts[0], calibration_dir=tmp_path))) as client:
        # zero-label needs the training days' channel statistics, which this untrained artifact lacks: refused now
        r = client.post("/calibrate", json={"day": "d", "spikes": counts.tolist()})
        assert r.status_code == 422 and "channel_reference" in r.json()["detail"]
        assert client.post("/calibrate", json={"day": "d", "spikes": counts.tolist(),
                                               "behavior": beh.tolist()}).status_code == 202
        status = client.app.state.alignnet.calibrator.wait(120)
        assert status["state"] == "failed" and "disk full" in status["error"]
        assert client.get("/model").json()["artifact"] == service_artifacts[0].name
        assert client.post("/decode", json={"spikes": counts[:, :20].tolist()}).status_code == 200


def test_drift_monitor_watches_the_served_latent_and_resets_on_a_new_model(tiny_dataset, tmp_path):
    from conftest import service_client

    from alignnet.service.http.app import create_app
    from alignnet.service.http.settings import Settings
    from alignnet.service.live.drift_monitor import MIN_LATENTS, DriftMonitor

    run = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--set", "train.days=[0]"]) == 0
    assert cli(["export", str(run / "artifact"), "--formats", "onnx"]) == 0
    engine = load_engine(run / "artifact", "onnx")
    assert engine.can_embed and engine.embed(np.ones((2, 16, 20))).shape[0] == 2
    np.testing.assert_allclose(engine.embed(np.ones((1, 16, 20))), load_engine(run / "artifact", "eager").embed(
        np.ones((1, 16, 20))), atol=1e-4)
    day = Dataset(tiny_dataset / "D").day(0)
    windows = np.stack([day.counts[s:s + 20].T for s in range(0, 600, 20)]).astype(np.float32)
    gauges = {}
    for label, w in (("training day", windows), ("silent channels", windows * (np.arange(16) % 2)[None, :, None])):
        monitor = DriftMonitor()
        for k in range(len(w)):
            monitor.observe(engine, w[k:k + 1])
        gauges[label] = monitor.status()["gauge"]
    assert gauges["silent channels"] > 2 * gauges["training day"], gauges
    monitor.observe(load_engine(run / "artifact", "onnx"), windows[:1])  # another engine: a fresh history
    assert monitor.status()["latents"] == 1 < MIN_LATENTS and monitor.status()["gauge"] is None
    with service_client(create_app(Settings(artifact=run / "artifact"))) as client:
        assert client.post("/decode", json={"spikes": windows[:3].tolist()}).status_code == 200
        assert client.get("/health").json()["drift"]["latents"] == 1
        assert "alignnet_drift" in client.get("/metrics").text


def test_drift_monitor_embeds_on_its_own_thread_and_skips_while_busy():
    """The bridge hands the window over and goes on: the embedding runs on the monitor's thread, and a window that
    falls due while one is being embedded is skipped rather than queued."""
    import threading

    from conftest import wait_until

    from alignnet.service.live.drift_monitor import DriftMonitor

    release, threads = threading.Event(), []

    class Engine:
        config = {"latent_reference": {"mean": [0.0] * 4, "cov": np.eye(4).tolist()}}
        can_embed = True

        def embed(self, window):
            threads.append(threading.current_thread().name)
            release.wait(5)
            return np.ones((1, 4))

    ring = type("Ring", (), {"buf": np.zeros((3, 5), np.float32)})()
    monitor, engine = DriftMonitor(every_bins=1, interval_s=0), Engine()
    monitor.add(np.zeros((1, 3)), engine, ring)
    monitor.add(np.zeros((1, 3)), engine, ring)  # due again while the first is still embedding: skipped
    release.set()
    assert wait_until(lambda: monitor.status()["latents"] == 1 and not monitor._busy)
    assert threads == ["drift-monitor_0"]
    monitor.add(np.zeros((1, 3)), engine, ring)  # due again, not busy: embedded
    assert wait_until(lambda: monitor.status()["latents"] == 2 and not monitor._busy)
    # many sources: the bins add up, but at most one embedding per interval
    monitor = DriftMonitor(every_bins=2, interval_s=60)
    for _ in range(40):
        monitor.add(np.zeros((1, 3)), engine, ring)
    assert wait_until(lambda: monitor.status()["latents"] == 1 and not monitor._busy)
    assert len(threads) == 3
