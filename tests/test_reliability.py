"""Reliability: each finding of the hardening probe (a clumsy user, an attacker, a dying stream) reproduced and
answered. In-process where the app suffices; a real `alignnet serve` where sockets, signals or threads matter."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import service_client, wait_until

from alignnet.model.artifacts import CONFIG, WEIGHTS, ArtifactError, read_config, seal_artifact, sha256, write_config
from alignnet.model.integrity import KEY_ENV
from alignnet.service.engines import load_engine
from alignnet.service.http.app import create_app
from alignnet.service.http.codec import NPY, to_npy
from alignnet.service.http.settings import Settings

pytestmark = pytest.mark.reliability


@pytest.fixture
def root(service_artifacts, tmp_path):
    """An artifact root holding a copy of the two test artifacts ('a' served, 'b' to reload)."""
    for a in service_artifacts:
        shutil.copytree(a, tmp_path / "models" / a.name)
    return tmp_path / "models"


def app_for(root: Path, **settings):
    return create_app(Settings(artifact=root / "a", **settings))


def edit_config(folder: Path, reseal: bool, **changes) -> None:
    """Change config.json's contract as a clumsy (reseal False) or deliberate (reseal True) editor would."""
    config = json.loads((folder / CONFIG).read_text())
    config["contract"].update(changes)
    if reseal:
        write_config(folder, config)
    else:
        (folder / CONFIG).write_text(json.dumps(config, indent=2))


# ---- artifacts that cannot be swapped behind our back -------------------------------------------------------------
def test_a_flipped_byte_in_any_file_is_refused_at_start_and_on_reload(root):
    for name in (WEIGHTS, "decode.onnx", CONFIG):
        path = root / "b" / name
        original = path.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(ArtifactError):
            load_engine(root / "b", "onnx")
        with service_client(create_app(Settings(artifact=root / "b"))) as c:
            assert c.get("/health").json()["model_loaded"] is False
            assert c.post("/decode", json={"spikes": np.zeros((16, 20)).tolist()}).status_code == 503
        with service_client(app_for(root)) as c:
            r = c.post("/reload", json={"artifact": "b"})
            assert r.status_code == 409 and "still serving" in r.json()["detail"], (name, r.text)
        path.write_bytes(original)


@pytest.mark.parametrize("changes,why", [
    ({"window_bins": 50}, "trial decode"), ({"window_bins": 7}, "trial"), ({"behavior_dims": 3,
                                                                            "behavior_names": ["x", "y", "z"],
                                                                            "behavior_mean": [0, 0, 0],
                                                                            "behavior_std": [1, 1, 1]}, "trial"),
    ({"window_bins": 10**9}, "plausible"), ({"spike_scale": [0.0] * 16}, "positive"),
    ({"spike_scale": [-1.0] * 16}, "positive"), ({"bin_s": 1e-12}, "plausible"),
])
def test_a_config_that_does_not_fit_its_graphs_never_serves(root, changes, why):
    counts = np.ones((16, 20)).tolist()
    with service_client(app_for(root)) as c:
        before = c.post("/decode", json={"spikes": counts}).json()["behavior"]
        edit_config(root / "b", reseal=False, **changes)  # an editor that forgets the hash: caught by the record
        r = c.post("/reload", json={"artifact": "b"})
        assert r.status_code == 409 and "changed after it was written" in r.json()["detail"]
        edit_config(root / "b", reseal=True, **changes)  # one that re-seals: caught by the contract or the probe
        r = c.post("/reload", json={"artifact": "b"})
        assert r.status_code == 409 and why in r.json()["detail"], r.text
        assert c.get("/health").json()["status"] == "ok"
        assert c.post("/decode", json={"spikes": counts}).json()["behavior"] == before


def test_a_signing_key_refuses_unsigned_and_tampered_artifacts(root, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "lab-secret")
    seal_artifact(root / "a")
    seal_artifact(root / "b")
    assert "hmac_sha256" in read_config(root / "b")["integrity"]
    monkeypatch.delenv(KEY_ENV)
    with service_client(app_for(root, artifact_key="lab-secret")) as c:
        assert c.get("/model").json()["signed"] is True
        assert c.post("/reload", json={"artifact": "b"}).status_code == 200
        # tampering with a graph and rewriting its hash (and re-sealing without the key) passes the hashes...
        onnx = root / "b" / "decode.onnx"
        onnx.write_bytes(onnx.read_bytes() + b"\0")
        config = read_config(root / "b")
        config["files"]["decode.onnx"] = sha256(onnx)
        write_config(root / "b", config)
        # ...but not the signature
        r = c.post("/reload", json={"artifact": "b"})
        assert r.status_code == 409 and "not signed" in r.json()["detail"]
        monkeypatch.setenv(KEY_ENV, "another-key")
        write_config(root / "b", config)
        r = c.post("/reload", json={"artifact": "b"})
        assert r.status_code == 409 and "does not match this service's key" in r.json()["detail"]


def test_identical_weights_hash_alike(service_artifacts, tmp_path):
    from alignnet.model.artifacts import load_artifact, save_artifact

    model, contract, _ = load_artifact(service_artifacts[0])
    hashes = {sha256(save_artifact(tmp_path / str(i), model, contract) / WEIGHTS) for i in range(3)}
    assert len(hashes) == 1


# ---- who may ask what ---------------------------------------------------------------------------------------------
def test_reload_needs_loopback_or_the_token_and_stays_under_the_root(root):
    with service_client(app_for(root)) as c:
        assert c.get("/model").json()["artifact"] == "a"  # no absolute paths
        assert str(root) not in c.get("/health").text + c.get("/model").text
        answers = {p: c.post("/reload", json={"artifact": p}) for p in ("/nonexistent", "/etc", "../../..")}
        assert {r.status_code for r in answers.values()} == {403}
        assert len({r.json()["detail"] for r in answers.values()}) == 1  # nothing told about what exists
    from fastapi.testclient import TestClient

    with TestClient(app_for(root), base_url="http://localhost", client=("10.0.0.7", 5000)) as remote:
        r = remote.post("/reload", json={"artifact": "b"})
        assert r.status_code == 403 and "ALIGNNET_ADMIN_TOKEN" in r.json()["detail"]
        assert remote.post("/decode", json={"spikes": np.zeros((16, 20)).tolist()}).status_code == 200
    with TestClient(app_for(root, admin_token="s3cret"), base_url="http://localhost",
                    client=("10.0.0.7", 5000)) as remote:
        assert remote.post("/reload", json={"artifact": "b"}).status_code == 401
        r = remote.post("/reload", json={"artifact": "b"}, headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = remote.post("/reload", json={"artifact": "b"}, headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["artifact"] == "b"


def test_hosts_and_origins_are_chosen_deliberately(root):
    from fastapi.testclient import TestClient

    with TestClient(app_for(root), base_url="http://evil.example", client=("127.0.0.1", 1)) as c:
        r = c.get("/health")
        assert r.status_code == 400 and "ALIGNNET_ALLOWED_HOSTS" in r.json()["detail"]
    with service_client(app_for(root, cors_origins="https://lab.example")) as c:
        body = {"spikes": np.zeros((16, 20)).tolist()}
        r = c.post("/decode", json=body, headers={"origin": "https://evil.example"})
        assert r.status_code == 403 and "origin" in r.json()["detail"]
        assert c.post("/decode", json=body, headers={"origin": "http://localhost"}).status_code == 200  # /docs
        r = c.post("/decode", json=body, headers={"origin": "https://lab.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://lab.example"


# ---- inputs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("route,body", [
    ("/decode", b'{"spikes": [[' + b"1" * 400 + b"]]}"),  # a JSON integer >= 10**309
    ("/simulate", b'{"behavior": [[' + b"9" * 400 + b"]]}"),
])
def test_huge_json_integers_are_a_4xx(root, route, body):
    with service_client(app_for(root)) as c:
        r = c.post(route, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"]


@pytest.mark.parametrize("shape,route", [((0, 16, 20), "/decode"), ((0, 2, 20), "/simulate")])
def test_empty_batches_are_a_4xx_with_every_engine(root, shape, route):
    for engine in ("onnx", "eager"):
        with service_client(app_for(root, engine=engine)) as c:
            r = c.post(route, content=to_npy(np.zeros(shape)), headers={"content-type": NPY})
            assert r.status_code == 422 and "batch of 0" in r.json()["detail"], (engine, r.text)


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(root):
    sent = []

    def body():
        for _ in range(100):
            sent.append(1)
            yield b"0" * 10_000

    with service_client(app_for(root, max_body_bytes=50_000)) as c:
        r = c.post("/decode", content=body(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "exceeds" in r.json()["detail"]


def test_errors_have_one_shape_and_validation_lists_the_fields(root):
    with service_client(app_for(root)) as c:
        r = c.post("/simulate?seed=-1", content=to_npy(np.zeros((2, 20))), headers={"content-type": NPY})
        assert r.status_code == 422 and isinstance(r.json()["detail"], str) and r.json()["errors"]
        r = c.post("/simulate", json={"behavior": "x"})
        assert r.status_code == 422 and isinstance(r.json()["detail"], str) and r.json()["errors"][0]["loc"]
        r = c.post("/reload", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 422 and isinstance(r.json()["detail"], str)


def test_batches_are_bounded_by_memory_and_run_in_chunks(root):
    counts = np.random.default_rng(0).poisson(1.0, (40, 16, 20)).astype(np.float32)
    whole, chunked = load_engine(root / "a", chunk=64), load_engine(root / "a", chunk=7)
    np.testing.assert_allclose(chunked.decode(counts), whole.decode(counts), atol=1e-5)
    # 16 x 20 windows of (16 + 2) x 20 numbers: about 35 KB each as Python objects, so 0.1 MB allows 3
    with service_client(app_for(root, request_memory_mb=0.1)) as c:
        assert c.get("/model").json()["max_windows"] == 3
        r = c.post("/decode", json={"spikes": counts[:4].tolist()})
        assert r.status_code == 422 and "send 1 to 3" in r.json()["detail"]


def test_a_full_engine_pool_answers_503_and_health_stays_free(root, monkeypatch):
    from alignnet.service import engines

    gate, entered = threading.Event(), threading.Event()
    original = engines.Engine.decode

    def slow(self, counts):
        entered.set()
        gate.wait(10)
        return original(self, counts)

    body = {"spikes": np.zeros((16, 20)).tolist()}
    with service_client(app_for(root, workers=1, queue=0)) as c:
        monkeypatch.setattr(engines.Engine, "decode", slow)  # after the start's trial decode
        first = threading.Thread(target=lambda: c.post("/decode", json=body))
        first.start()
        assert entered.wait(10)
        assert c.get("/health").json()["engine_pool"]["in_flight"] == 1  # answered while the decode runs
        r = c.post("/decode", json=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        gate.set()
        first.join(10)
        assert c.post("/decode", json=body).status_code == 200


def test_openapi_describes_the_served_contract_and_every_error(root):
    with service_client(app_for(root)) as c:
        schema = c.get("/openapi.json").json()
        spikes = schema["components"]["schemas"]["DecodeRequest"]["properties"]["spikes"]["anyOf"][0]
        assert (spikes["minItems"], spikes["maxItems"]) == (16, 16)
        assert (spikes["items"]["minItems"], spikes["items"]["maxItems"]) == (20, 20)
        codes = set(schema["paths"]["/decode"]["post"]["responses"])
        assert {"200", "413", "415", "422", "503"} <= codes
        assert {"401", "403", "409"} <= set(schema["paths"]["/reload"]["post"]["responses"])
        assert "HTTPValidationError" not in schema["components"]["schemas"]
        c.post("/reload", json={"artifact": "b"})
        assert c.get("/openapi.json").json() == schema  # the same contract: the same schema


# ---- a real server: slow bodies, responsiveness -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(service_artifacts):
    import os

    from alignnet.service.http.launcher import serving

    os.environ["ALIGNNET_BODY_TIMEOUT_S"] = "1"
    try:
        with serving(service_artifacts[0]) as url:
            yield url
    finally:
        del os.environ["ALIGNNET_BODY_TIMEOUT_S"]


def test_a_body_that_never_arrives_gets_408_and_frees_the_connection(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /decode HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 20\r\n\r\n{\"")
        answer = s.recv(4096)  # the socket's own 10-s timeout would fail the test if no answer came
        assert answer.startswith(b"HTTP/1.1 408")


def test_health_answers_while_a_big_simulate_runs(server):
    import httpx

    behavior = np.zeros((256, 2, 20)).tolist()
    done = threading.Event()

    def big():
        httpx.post(server + "/simulate", json={"behavior": behavior, "sample": True}, timeout=120)
        done.set()

    thread = threading.Thread(target=big)
    thread.start()
    answered_before = []
    while not done.is_set():
        httpx.get(server + "/health", timeout=10)
        answered_before.append(not done.is_set())
    thread.join()
    assert any(answered_before)


# ---- the data CLI -------------------------------------------------------------------------------------------------
def _dataset(tmp_path: Path, tiny_dataset: Path) -> Path:
    d = tmp_path / "D"
    shutil.copytree(tiny_dataset / "D", d)
    return d


@pytest.mark.parametrize("edit,expect", [
    (lambda m: [m], "JSON object"),
    (lambda m: {k: v for k, v in m.items() if k != "days"}, "'days'"),
    (lambda m: {**m, "days": "day0"}, "'days'"),
    (lambda m: {**m, "days": [None]}, "day 0"),
    (lambda m: {k: v for k, v in m.items() if k != "contract"}, "contract"),
    (lambda m: {**m, "days": [{**m["days"][0], "file": "../../../../etc/passwd"}]}, "outside the dataset"),
    (lambda m: {**m, "contract": {**m["contract"], "n_channels": 32}}, "32 matched channels"),
])
def test_malformed_manifests_are_clear_cli_errors(tmp_path, tiny_dataset, capsys, edit, expect):
    from alignnet.cli.main import main

    d = _dataset(tmp_path, tiny_dataset)
    manifest = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps(edit(manifest)))
    assert main(["data", "info", str(d)]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err


def test_malformed_day_files_are_clear_cli_errors(tmp_path, tiny_dataset, capsys):
    from alignnet.cli.main import main

    d = _dataset(tmp_path, tiny_dataset)
    day0 = json.loads((d / "manifest.json").read_text())["days"][0]["file"]
    (d / day0).write_text("oops\n")
    assert main(["data", "info", str(d)]) == 2
    assert "not an .npz archive" in capsys.readouterr().err


def _binned(path: Path, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"spike_counts": rng.poisson(1.0, (400, 8)), "bin_size_s": np.float64(0.02),
              "pos": np.cumsum(rng.standard_normal((400, 2)), axis=0), "trial_id": np.repeat(np.arange(20), 20)}
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("overrides,expect", [
    ({"bin_size_s": np.array([0.02, 0.02])}, "one number of seconds"),
    ({"spike_counts": np.full((400, 8), 0.5)}, "whole numbers"),
    ({"spike_counts": np.full((400, 8), 65535)}, "plausible"),
    ({"spike_counts": np.zeros((0, 8)), "pos": np.zeros((0, 2)), "trial_id": np.zeros(0)}, "at least one"),
])
def test_bad_binned_files_are_refused_naming_the_problem(tmp_path, capsys, overrides, expect):
    from alignnet.cli.main import main

    src = _binned(tmp_path / "day.npz", **overrides)
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expect in err and "day.npz" in err and "Traceback" not in err


# ---- training --------------------------------------------------------------------------------------------------
def test_resume_refuses_changed_settings_and_keeps_the_recorded_config(tmp_path, tiny_dataset, capsys):
    from alignnet.cli.main import main

    run = tmp_path / "run"
    base = ["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run)]
    assert main(base) == 0
    recorded = (run / "config.yaml").read_text()
    assert main(base + ["--resume", "--set", "finetune.lr=0.01", "--set", "train.seed=3"]) == 2
    err = capsys.readouterr().err
    assert "finetune.lr" in err and "train.seed" in err and "--force" in err
    assert main(base + ["--resume"]) == 0  # the same settings resume
    assert main(base + ["--resume", "--force", "--set", "finetune.lr=0.01"]) == 0
    assert (run / "config.yaml").read_text() == recorded
    assert "0.01" in (run / "config.resumed.yaml").read_text()


# ---- LSL: a frozen source, and a clean exit ---------------------------------------------------------------------
SOURCE = """
import sys, time
import numpy as np, pylsl
info = pylsl.StreamInfo(sys.argv[1], "Spikes", 16, 50.0, "float32", sys.argv[2])
out = pylsl.StreamOutlet(info)
t = time.monotonic()
while True:
    out.push_sample(np.ones(16, np.float32))
    t += 0.02
    time.sleep(max(0.0, t - time.monotonic()))
"""


def _source(name: str, source_id: str):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", SOURCE, name, source_id], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_a_frozen_source_is_reported_stalled_and_a_new_one_of_its_name_taken(service_artifacts):
    import os
    import signal

    name = f"frozen-{os.getpid()}"
    settings = Settings(artifact=service_artifacts[0], lsl_decode=True, lsl_source_name=name,
                        lsl_resolve_timeout_s=1.0, lsl_stall_s=0.5)
    first = _source(name, "first")
    second = None
    try:
        with service_client(create_app(settings)) as c:
            def bridge():
                return c.get("/health").json()["lsl"]["bridges"][0]

            assert wait_until(lambda: bridge()["state"] == "streaming" and bridge()["samples"] > 10, 30), bridge()
            os.kill(first.pid, signal.SIGSTOP)  # frozen: alive, connected, silent
            assert wait_until(lambda: bridge()["state"] == "stalled", 10), bridge()  # (timed in the benchmark)
            assert f'alignnet_lsl_stalls_total{{direction="decode",stream="{name}"}} 1.0' in c.get("/metrics").text
            second = _source(name, "second")
            assert wait_until(lambda: bridge()["source"]["source_id"] == "second", 30), bridge()
            seen = bridge()["samples"]
            assert wait_until(lambda: bridge()["state"] == "streaming" and bridge()["samples"] > seen + 10, 10)
    finally:
        for p in (first, second):
            if p is not None:
                p.kill()
                p.wait()


def test_a_scored_replay_ends_without_error_lines(service_artifacts, tiny_dataset):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "alignnet", "replay", str(tiny_dataset / "D"), "--day", "2",
                        "--seconds", "3", "--serve", str(service_artifacts[0]), "--score", "--speed", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"decoded"' in r.stdout
    assert "ERR" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
