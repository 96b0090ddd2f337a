"""Calibration you can trust (POST /calibrate): a crash at any point of the save restarts into a whole model, a
calibration that decodes worse is kept but not served, degenerate or oversized input is refused before any work,
a reload cannot be undone by a calibration, answers carry no absolute path, and a refused calibration at start is
shown as a degraded status."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from alignnet.cli.main import main as cli
from alignnet.recordings.dataset import Dataset


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A tiny AlignNet trained on days 0 and 1, exported, and day 2's first 300 bins (counts, behavior)."""
    run = tmp_path_factory.mktemp("safety") / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--set", "train.days=[0,1]"]) == 0
    assert cli(["export", str(run / "artifact"), "--formats", "onnx"]) == 0
    day = Dataset(tiny_dataset / "D").day(2)
    return run / "artifact", day.counts[:300].T.astype(float), day.pos[:300].T.astype(float)


def _app(artifact: Path, cal: Path, **kw):
    from alignnet.service.http.app import create_app
    from alignnet.service.http.settings import Settings

    return create_app(Settings(artifact=artifact, calibration_dir=cal, **kw))


def _client(app):
    from conftest import service_client

    return service_client(app)


def _calibrate(client, counts, beh, day="d", timeout=300) -> dict:
    body = {"day": day, "spikes": counts.tolist()}
    if beh is not None:
        body["behavior"] = beh.tolist()
    r = client.post("/calibrate", json=body)
    assert r.status_code == 202, r.json()
    return client.app.state.alignnet.calibrator.wait(timeout)


# --- kill -9 at every point of the save --------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import importlib, json, os, signal, sys
    import numpy as np
    artifact, cal, block, module, name, nth, when = sys.argv[1:8]
    nth = int(nth)
    if module != "none":  # SIGKILL this process at the named call: no handler, no cleanup, as kill -9
        mod = importlib.import_module(module)
        real, calls = getattr(mod, name), [0]
        def wrapped(*a, **k):
            calls[0] += 1
            if calls[0] == nth and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            out = real(*a, **k)
            if calls[0] == nth and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        setattr(mod, name, wrapped)
    import alignnet.service.calibration as calibration
    calibration.compare = lambda *a: {"better": True, "why": "forced by the test"}  # the save is under test
    from alignnet.service.http.state import State
    from alignnet.service.http.settings import Settings
    state = State(Settings(artifact=artifact, calibration_dir=cal))
    state.load()
    data = np.load(block)
    state.calibrator.start(state, data["counts"], data["behavior"], "d")
    print(json.dumps(state.calibrator.wait(300)["state"]))
    sys.stdout.flush()
    os._exit(0)
""")

# (module, function, which call, kill before or after it, what a restart must serve: the old or the new model)
KILL_POINTS = {
    "weights written, nothing exported": ("alignnet.training.calibrate", "save_artifact", 1, "after", "old"),
    "mid-export (one graph moved in)": ("alignnet.training.export", "add_file", 1, "after", "old"),
    "exported, not yet verified": ("alignnet.training.calibrate", "export_artifact", 1, "after", "old"),
    "renamed into place, not swapped": ("alignnet.service.calibration", "_fsync_dir", 1, "before", "old"),
    "swapped, current.json not written": ("alignnet.service.calibration", "atomic_write_json", 1, "before", "old"),
    "current.json written": ("alignnet.service.calibration", "atomic_write_json", 1, "after", "new"),
}


def _served(artifact: Path, cal: Path, engine: str, x: np.ndarray):
    from alignnet.service.http.settings import Settings
    from alignnet.service.http.state import State

    state = State(Settings(artifact=artifact, calibration_dir=cal, engine=engine))
    e = state.load()
    try:
        return e.folder.name, e.decode(x), state.fallback
    finally:
        state.pool.shutdown()


def test_kill_9_at_any_point_of_a_calibration_restarts_into_a_whole_model(trained, tmp_path):
    artifact, counts, beh = trained
    first = tmp_path / "first"
    np.savez(tmp_path / "b1.npz", counts=counts, behavior=beh)
    rng = np.random.default_rng(0)  # the second calibration: another block, so that its model differs
    np.savez(tmp_path / "b2.npz", counts=counts[:, ::-1].copy(), behavior=beh[:, rng.permutation(300)])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}

    def child(cal: Path, block: str, point=("none", "-", 0, "-", "-")):
        return subprocess.run([sys.executable, "-c", CHILD, str(artifact), str(cal), str(tmp_path / block),
                               *map(str, point[:4])], capture_output=True, text=True, timeout=600, env=env)

    r = child(first, "b1.npz")
    assert r.returncode == 0 and json.loads(r.stdout) == "done", r.stderr[-3000:]
    x = counts[None, :, -20:].astype(np.float32)
    old_name, old_y, _ = _served(artifact, first, "onnx", x)
    assert old_name.startswith("d-")
    cals = {label: tmp_path / label.split()[0] for label in KILL_POINTS}
    for cal in cals.values():
        shutil.copytree(first, cal)
    with ThreadPoolExecutor(2) as pool:  # two children at a time (each mostly waits on its own process)
        runs = dict(zip(KILL_POINTS, pool.map(lambda lp: child(cals[lp[0]], "b2.npz", lp[1]), KILL_POINTS.items())))
    for label, point in KILL_POINTS.items():
        cal, r = cals[label], runs[label]
        assert r.returncode == -signal.SIGKILL, (label, r.returncode, r.stderr[-3000:])
        name, y, fallback = _served(artifact, cal, "onnx", x)
        name_eager, y_eager, _ = _served(artifact, cal, "eager", x)
        assert name == name_eager and fallback is None, (label, name, name_eager, fallback)
        # never mixed: the exported graph and the weights of what is served decode alike
        np.testing.assert_allclose(y, y_eager, atol=1e-4, err_msg=label)
        assert not list(cal.glob(".tmp-*")), label  # a restart removes what the killed save left
        if point[4] == "old":
            assert name == old_name, (label, name)
            np.testing.assert_array_equal(y, old_y, err_msg=label)
        else:
            assert name != old_name and name.startswith("d-"), (label, name)
            assert np.abs(y - old_y).max() > 1e-3, label  # the new calibration, not the old one renamed


# --- what is swapped in -------------------------------------------------------------------------------------------

def test_a_calibration_that_decodes_worse_is_kept_on_disk_but_not_served(trained, tmp_path):
    artifact, counts, beh = trained
    cal = tmp_path / "cal"
    with _client(_app(artifact, cal)) as client:
        good = _calibrate(client, counts, beh)
        assert good["state"] == "done", good
        served = client.get("/model").json()["artifact"]
        shuffled = beh[:, np.random.default_rng(0).permutation(beh.shape[1])]  # time-shuffled behavior
        bad = _calibrate(client, counts, shuffled)
        assert bad["state"] == "rejected", bad
        health = client.get("/health").json()
        assert health["status"] == "ok" and client.get("/model").json()["artifact"] == served
        scores = health["calibration"]["report"]["heldout"]
        assert scores["candidate"] is not None and scores["served"] is not None, scores
        assert "not served" in health["calibration"]["error"]
        assert (cal / bad["artifact"] / "config.json").is_file()  # kept, for the operator to look at
        assert json.loads((cal / "current.json").read_text())["artifact"] == served


def test_degenerate_or_oversized_calibration_input_is_refused_before_any_work(trained, tmp_path):
    artifact, counts, beh = trained
    cal = tmp_path / "cal"
    silent = counts.copy()
    silent[:, :200] = 0
    huge, half = counts.copy(), counts.copy()
    huge[3, 10] = 1e30
    half[0, 0] = 1.5
    flat = beh.copy()
    flat[1] = 0.25
    cases = [((silent, None), "silent"), ((huge, beh), "implausible"), ((half, beh), "whole numbers"),
             ((counts, flat), "constant"), ((counts, beh * np.nan), "NaN")]
    with _client(_app(artifact, cal, calibration_max_seconds=8.0)) as client:
        for (c, b), expect in cases:
            body = {"day": "d", "spikes": c.tolist()} | ({} if b is None else {"behavior": b.tolist()})
            r = client.post("/calibrate", content=json.dumps(body), headers={"content-type": "application/json"})
            assert r.status_code == 422 and (expect in r.json()["detail"] or expect == "NaN"), (expect, r.json())
        long = np.tile(counts, 2)  # 600 bins of 20 ms = 12 s > 8 s
        r = client.post("/calibrate", json={"day": "d", "spikes": long.tolist(), "behavior": np.tile(beh, 2).tolist()})
        assert r.status_code == 413 and "at most 400 bins" in r.json()["detail"], r.json()
        r = client.post("/calibrate", json={"day": "d", "spikes": np.tile(counts, 20).tolist()})
        assert r.status_code == 413 and "too many numbers" in r.json()["detail"], r.json()
        assert client.app.state.alignnet.calibrator.status["state"] == "idle"
        assert not cal.exists() or not any(cal.iterdir())


def test_a_reload_while_a_calibration_runs_is_refused_not_undone(trained, service_artifacts, tmp_path, monkeypatch):
    import alignnet.training.calibrate as calibrate

    artifact, counts, beh = trained
    release, entered, real = threading.Event(), threading.Event(), calibrate.calibrate_block

    def slow(*a, **k):
        entered.set()
        assert release.wait(120)
        return real(*a, **k)

    monkeypatch.setattr(calibrate, "calibrate_block", slow)
    with _client(_app(artifact, tmp_path / "cal")) as client:
        r = client.post("/calibrate", json={"day": "d", "spikes": counts.tolist(), "behavior": beh.tolist()})
        assert r.status_code == 202 and entered.wait(30)
        r = client.post("/reload", json={})
        assert r.status_code == 409 and "calibration of day d is running" in r.json()["detail"], r.json()
        r = client.post("/calibrate", json={"day": "e", "spikes": counts.tolist(), "behavior": beh.tolist()})
        assert r.status_code == 409 and "running" in r.json()["detail"]
        release.set()
        assert client.app.state.alignnet.calibrator.wait(300)["state"] == "done"
        assert client.post("/reload", json={}).status_code == 200


# --- what answers show ---------------------------------------------------------------------------------------------

def test_no_answer_carries_an_absolute_path(trained, tmp_path, monkeypatch):
    import alignnet.training.calibrate as calibrate

    artifact, counts, beh = trained
    cal = tmp_path / "cal"
    with _client(_app(artifact, cal)) as client:
        assert _calibrate(client, counts, beh)["state"] == "done"
        for route in ("/health", "/model"):
            text = client.get(route).text
            assert str(artifact.parent) not in text and str(cal) not in text and str(tmp_path) not in text, route

        def fails(base, *a, **k):
            raise OSError(f"[Errno 28] No space left on device: '{cal}/.tmp-x/model.safetensors'")

        monkeypatch.setattr(calibrate, "calibrate_block", fails)
        status = _calibrate(client, counts, beh)
        assert status["state"] == "failed"
        error = client.get("/health").json()["calibration"]["error"]
        assert "No space left" in error and str(tmp_path) not in error, error


def test_a_refused_calibration_at_start_is_a_degraded_status_naming_it(trained, tmp_path):
    artifact, counts, beh = trained
    cal = tmp_path / "cal"
    with _client(_app(artifact, cal)) as client:
        name = _calibrate(client, counts, beh)["artifact"]
    with (cal / name / "decode.onnx").open("ab") as f:  # altered on disk
        f.write(b"\0")
    (cal / ".tmp-killed").mkdir()  # what a killed calibration leaves
    with _client(_app(artifact, cal)) as client:
        health = client.get("/health").json()
        assert health["status"] == "degraded", health
        assert health["fallback"]["refused"] == name and health["fallback"]["serving"] == artifact.name
        assert "decode.onnx" in health["fallback"]["why"]
        assert client.get("/model").json()["artifact"] == artifact.name
        assert client.post("/decode", json={"spikes": counts[:, :20].tolist()}).status_code == 200
    assert not (cal / ".tmp-killed").exists()
    (cal / "current.json").write_text(json.dumps({"artifact": "../../elsewhere", "base_sha256": "x"}))
    with _client(_app(artifact, cal)) as client:
        health = client.get("/health").json()
        assert health["status"] == "degraded" and "not a folder of the calibration dir" in health["fallback"]["why"]


def test_calibrations_beyond_the_retention_limit_are_removed(trained, tmp_path, monkeypatch):
    import alignnet.service.calibration as calibration

    artifact, counts, beh = trained
    cal = tmp_path / "cal"
    monkeypatch.setattr(calibration, "compare", lambda *a: {"better": True, "why": "forced"})
    with _client(_app(artifact, cal, calibration_keep=2)) as client:
        names = [_calibrate(client, counts, beh, day=f"d{k}")["artifact"] for k in range(3)]
        kept = sorted(p.name for p in cal.iterdir() if p.is_dir())
        assert kept == sorted(names[1:]), (kept, names)
        assert client.get("/model").json()["artifact"] == names[-1]


def test_the_calibration_bound_counts_the_fit_and_the_block():
    """A calibration's block is bounded by what the whole calibration takes (docs/benchmarks.md: ~1.8 GB fixed, then
    ~2.3 KB a number, measured): the default model's 64 + 2 numbers a bin admit 8,420 bins within 3,072 MB, the
    fixed part alone admits none, and a setting below what the fit itself needs is refused."""
    from pydantic import ValidationError

    from alignnet.model.artifacts import read_config
    from alignnet.service.calibration import BYTES_PER_NUMBER, CALIBRATION_FIXED_MB, max_calibration_bins
    from alignnet.service.http.settings import DEFAULT_ARTIFACT, Settings

    config = read_config(DEFAULT_ARTIFACT)
    s = Settings()
    assert max_calibration_bins(config, s.calibration_max_seconds, s.calibration_memory_mb) == 8420
    assert max_calibration_bins(config, 1e9, CALIBRATION_FIXED_MB) == 1
    assert max_calibration_bins(config, 10.0, 1e6) == 500  # 10 s of 20-ms bins: time bounds it
    assert BYTES_PER_NUMBER >= 2300 and CALIBRATION_FIXED_MB >= 1700  # no lower than what was measured
    with pytest.raises(ValidationError, match="calibration_memory_mb"):
        Settings(calibration_memory_mb=1024)
