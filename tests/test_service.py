import io

import numpy as np
import pytest
from conftest import service_client

from alignnet.service.engines import load_engine
from alignnet.service.http.app import NPY, create_app
from alignnet.service.http.settings import Settings


@pytest.fixture(scope="module")
def artifacts(service_artifacts):
    return service_artifacts


@pytest.fixture
def client(artifacts):
    app = create_app(Settings(artifact=artifacts[0], max_batch=8, max_body_bytes=200_000))
    with service_client(app) as c:
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
    r = client.post("/reload", json={"artifact": str(artifacts[0].parent / "missing")})
    assert r.status_code == 409 and "still serving" in r.json()["detail"]
    assert str(artifacts[0].parent) not in r.json()["detail"]  # no absolute paths in answers
    assert client.post("/decode", json={"spikes": counts}).json()["behavior"] == before
    r = client.post("/reload", json={"artifact": artifacts[1].name})  # relative to the artifact root
    assert r.status_code == 200 and r.json()["artifact"] == artifacts[1].name
    after = client.post("/decode", json={"spikes": counts}).json()["behavior"]
    assert after != before


def test_no_model_answers_503_with_the_reason(tmp_path):
    with service_client(create_app(Settings(artifact=tmp_path / "none"))) as c:
        assert c.get("/health").json()["model_loaded"] is False
        r = c.post("/decode", json={"spikes": [[0]]})
        assert r.status_code == 503 and "not found" in r.json()["detail"]


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def test_binary_numpy_body_equals_json(client):
    counts = np.random.default_rng(2).poisson(1.0, (2, 16, 20)).astype(np.float32)
    js = client.post("/decode", json={"spikes": counts.tolist()}).json()["behavior"]
    r = client.post("/decode", content=_npy(counts), headers={"content-type": NPY, "accept": NPY})
    assert r.status_code == 200 and r.headers["content-type"] == NPY
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), np.asarray(js, np.float32))
    r = client.post("/decode", content=_npy(counts[0]), headers={"content-type": NPY})  # JSON answer by default
    np.testing.assert_allclose(r.json()["behavior"][0], js[0], atol=1e-6)
    beh = np.zeros((2, 20), np.float32)
    r = client.post("/simulate?sample=true&seed=1", content=_npy(beh), headers={"content-type": NPY, "accept": NPY})
    assert r.status_code == 200 and np.load(io.BytesIO(r.content)).shape == (1, 16, 20)


@pytest.mark.parametrize("body,ctype,status,expect", [
    (b"not an npy file", NPY, 422, "not a readable .npy"),
    (_npy(np.array([{"a": 1}], dtype=object)), NPY, 422, "npy"),  # pickles are refused
    (_npy(np.array(["a"] * 16)), NPY, 422, "numbers"),
    (_npy(np.full((16, 20), np.nan, np.float32)), NPY, 422, "finite"),
    (_npy(np.zeros((16, 21), np.float32)), NPY, 422, "16 x 20"),
    # a header that lies about its shape asks for 40 GB over a 1,280-byte body: refused before any allocation
    (_npy(np.zeros((16, 20), np.float32)).replace(b"(16, 20)", b"(100000, 100000)"), NPY, 422, "declares shape"),
    (_npy(np.zeros((16, 20), np.float32))[:-8], NPY, 422, "declares shape"),  # truncated
    (b"spikes=1", "application/x-www-form-urlencoded", 415, "not supported"),
])
def test_bad_binary_bodies(client, body, ctype, status, expect):
    r = client.post("/decode", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert expect in r.json()["detail"]


def test_the_service_limits_numpy_blas_threads_while_it_runs(artifacts):
    """A second OpenBLAS thread spins between the incremental decoder's small products (most of a core on 2 cores);
    the service runs numpy's BLAS on ``blas_threads`` (1 by default) and gives the old limit back when it stops."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    if not before:
        pytest.skip("numpy here has no BLAS that threadpoolctl can limit")
    assert Settings().blas_threads == 1
    with service_client(create_app(Settings(artifact=artifacts[0], blas_threads=3))) as c:
        assert c.get("/health").status_code == 200
        assert set(blas_threads().values()) == {3}
    assert blas_threads() == before


def test_concurrent_decode_requests_are_batched_with_each_its_own_answer(artifacts, caplog):
    """With ``http_batch_wait_s``, the windows of requests that arrive together go through one engine call, and
    each request gets its own rows back; a bad request is refused alone (422), not with its batch."""
    import threading

    from alignnet.service.live.batcher import Batcher
    from alignnet.service.live.routes import window_group

    engine = load_engine(artifacts[0], "onnx")
    counts = [np.random.default_rng(i).poisson(1.0, (i + 1, 16, 20)).astype(np.float32) for i in range(4)]
    batcher = Batcher()
    group = window_group(batcher, engine, None, 1)
    outs: list = [None] * 4
    threads = [threading.Thread(target=lambda i=i: outs.__setitem__(
        i, batcher.run(group, engine.contract.preprocess_spikes(counts[i]), wait_s=0.05))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_allclose(outs[i], engine.decode(counts[i]), atol=1e-6)
    assert group.stats["items"] == 10 and group.stats["calls"] < 4, group.stats
    settings = Settings(artifact=artifacts[0], workers=3, http_batch_wait_s=0.002)
    with service_client(create_app(settings)) as c:
        r = c.post("/decode", json={"spikes": counts[2].tolist()})
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["behavior"], engine.decode(counts[2]), atol=1e-6)
        bad = c.post("/decode", json={"spikes": np.full((16, 20), -1.0).tolist()})
        assert bad.status_code == 422 and "negative" in bad.text
        assert c.get("/health").json()["http_batching"]["items"] == 3
    with service_client(create_app(Settings(artifact=artifacts[0]))) as c:
        assert c.get("/health").json()["http_batching"] is None
    with caplog.at_level("WARNING"):  # one worker: requests reach the engine one at a time, nothing to batch
        create_app(Settings(artifact=artifacts[0], http_batch_wait_s=0.002))
    assert "workers is 1" in caplog.text
