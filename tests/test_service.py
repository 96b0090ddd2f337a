import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model import DataContract, create_model
from model.artifacts import save_artifact
from service.app import create_app
from service.engines import load_engine
from service.settings import Settings
from training.export import export_artifact


def _artifact(folder, seed):
    torch.manual_seed(seed)
    model = create_model("test-alignnet").eval()
    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=20, spike_scale=[0.7] * 16,
                            behavior_mean=[0.0, 0.0], behavior_std=[1.0, 1.0])
    save_artifact(folder, model, contract)
    export_artifact(folder, ("onnx",))
    return folder


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    return _artifact(root / "a", 0), _artifact(root / "b", 1)


@pytest.fixture
def client(artifacts):
    app = create_app(Settings(artifact=artifacts[0], max_batch=8, max_body_bytes=200_000))
    with TestClient(app) as c:
        yield c


def test_decode_and_simulate_equal_the_engine(client, artifacts):
    engine = load_engine(artifacts[0], "onnx")
    counts = np.random.default_rng(0).poisson(1.0, (3, 16, 20))
    r = client.post("/decode", json={"spikes": counts.tolist()})
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["behavior"], engine.decode(counts.astype(np.float32)), atol=1e-6)
    one = client.post("/decode", json={"spikes": counts[0].tolist()}).json()["behavior"]
    assert np.asarray(one).shape == (1, 2, 20)
    beh = np.random.default_rng(1).standard_normal((2, 2, 20))
    r = client.post("/simulate", json={"behavior": beh.tolist(), "sample": True, "seed": 3})
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["rates"], engine.simulate(beh.astype(np.float32)), atol=1e-5)
    assert np.asarray(r.json()["spikes"]).shape == (2, 16, 20)


@pytest.mark.parametrize("body,expect", [
    ({"spikes": np.zeros((15, 20)).tolist()}, "16 x 20"),  # wrong channel count
    ({"spikes": [[1.0] * 20] * 15 + [[1.0] * 19]}, None),  # ragged
    ({"spikes": (-np.ones((16, 20))).tolist()}, "non-negative"),
    ({"spikes": [[True] * 20] * 16}, None),  # bools are not counts
    ({"spikes": np.zeros((9, 16, 20)).tolist()}, "limit of 8"),
    ({"spikes": "nope"}, None),
    ({"spikez": []}, None),
])
def test_bad_input_gets_a_4xx_with_a_message(client, body, expect):
    r = client.post("/decode", json=body)
    assert r.status_code == 422, r.text
    if expect:
        assert expect in r.json()["detail"]


def test_non_finite_and_oversized_bodies(client):
    r = client.post("/decode", content=b'{"spikes": [[1e400]]}', headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/decode", content=b"[" + b"0," * 200_000 + b"0]", headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds" in r.json()["detail"]


def test_health_model_metrics(client):
    assert client.get("/health").json()["model_loaded"] is True
    info = client.get("/model").json()
    assert info["model"] == "test-alignnet" and info["contract"]["n_channels"] == 16
    client.post("/decode", json={"spikes": np.zeros((16, 20)).tolist()})
    text = client.get("/metrics").text
    assert 'alignnet_windows_total{path="decode"}' in text and "alignnet_request_seconds_bucket" in text


def test_hot_reload_and_failed_reload_keeps_the_old_model(client, artifacts, tmp_path):
    counts = np.ones((1, 16, 20)).tolist()
    before = client.post("/decode", json={"spikes": counts}).json()["behavior"]
    r = client.post("/reload", json={"artifact": str(tmp_path / "missing")})
    assert r.status_code == 409 and "still serving" in r.json()["detail"]
    assert client.post("/decode", json={"spikes": counts}).json()["behavior"] == before
    r = client.post("/reload", json={"artifact": str(artifacts[1])})
    assert r.status_code == 200
    after = client.post("/decode", json={"spikes": counts}).json()["behavior"]
    assert after != before


def test_no_model_answers_503_with_the_reason(tmp_path):
    with TestClient(create_app(Settings(artifact=tmp_path / "none"))) as c:
        assert c.get("/health").json()["model_loaded"] is False
        r = c.post("/decode", json={"spikes": [[0]]})
        assert r.status_code == 503 and "not found" in r.json()["detail"]
