"""Clients: the replayer and the online scorer (through a real LSL bridge), the Python client, the demo's parts."""

import threading
import uuid

import numpy as np
import pytest

from alignnet.model.metrics import r2
from alignnet.recordings.dataset import Dataset
from alignnet.service.engines import load_engine
from alignnet.service.live.lsl import Bridge, BridgeConfig

pylsl = pytest.importorskip("pylsl")




def _replay_through_bridge(engine, counts, beh, bin_s, hop):
    """Replay (counts, behavior) at 4x through a Bridge on ``engine``; returns the scorer, the bridge and the stamp
    each input bin was sent with."""
    from alignnet.clients.replay import OnlineScorer, Replayer

    name = f"test-replay-{uuid.uuid4().hex[:8]}"
    replayer = Replayer(counts, beh, bin_s, name, speed=4.0)
    bridge = Bridge(BridgeConfig(source_name=name, hop_bins=hop, max_lag_bins=1000, resolve_timeout_s=2.0),
                    lambda: engine).start()
    try:
        assert replayer.wait_for_consumers(10.0)
        scorer = OnlineScorer(name, timeout=10.0)
        thread = threading.Thread(target=replayer.run, daemon=True)
        thread.start()
        while thread.is_alive():
            scorer.poll()
        scorer.collect(len(counts))
    finally:
        bridge.stop()
    return scorer, bridge, replayer.stamps


def test_replay_online_r2_equals_offline_evaluate_r2(tiny_dataset, service_artifacts):
    from alignnet.clients.replay import engine_twin

    engine = load_engine(service_artifacts[0], "onnx")
    day = Dataset(tiny_dataset / "D").day(0)
    n = 200  # ten non-overlapping 20-bin windows
    counts, beh = day.counts[:n], day.behavior("pos")[:n]
    scorer, bridge, _ = _replay_through_bridge(engine, counts, beh, day.bin_s, 20)
    online = scorer.score()
    assert online["matched"] == n and bridge.counts["dropped"] == 0
    # offline: the evaluate computation (windows of the day, engine decode, r2 over windows) on the same windows
    cw, bw, _ = day.windows(20, 20, "pos", starts=np.arange(0, n, 20))
    offline = r2(bw, engine.decode(cw), feature_axis=1)
    assert abs(online["r2"] - offline) <= 1e-6, (online["r2"], offline)
    _, _, decoded = scorer.matched()
    np.testing.assert_allclose(decoded, engine_twin(engine, counts, 20), atol=1e-5)


# ---- the Python client ---------------------------------------------------------------------------------------
def test_client_sync_and_async_equal_the_engine(service_artifacts):
    import asyncio

    import httpx
    from conftest import service_client

    from alignnet.clients import AsyncClient, Client, ServiceError
    from alignnet.service.http.app import create_app
    from alignnet.service.http.settings import Settings

    engine = load_engine(service_artifacts[0], "onnx")
    counts = np.random.default_rng(0).poisson(1.0, (3, 16, 20)).astype(np.float32)
    app = create_app(Settings(artifact=service_artifacts[0]))
    with service_client(app) as http:  # runs the app's lifespan; the client speaks to it in-process
        c = Client("http://localhost", http=http)
        np.testing.assert_allclose(c.decode(counts), engine.decode(counts), atol=1e-6)
        assert c.decode(counts[0]).shape == (1, 2, 20)
        spikes = c.simulate(np.zeros((2, 20)), sample=True, seed=1)
        assert spikes.shape == (1, 16, 20) and (spikes == np.round(spikes)).all()
        with pytest.raises(ServiceError, match="16 x 20") as e:
            c.decode(np.zeros((15, 20)))
        assert e.value.status == 422
        with pytest.raises(TypeError):
            c.decode(np.array(["a"]))

        async def run():
            async with AsyncClient("http://localhost", http=httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://localhost")) as ac:
                return await ac.decode(counts), (await ac.model())["model"]

        y, name = asyncio.run(run())
        np.testing.assert_allclose(y, engine.decode(counts), atol=1e-6)
        assert name == "test-alignnet"


def test_client_retries_5xx_and_reports_unreachable_services():
    import httpx

    from alignnet.clients import Client, ServiceError
    from alignnet.service.http.codec import NPY, to_npy

    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(503, json={"detail": "no model loaded"})
        return httpx.Response(200, content=to_npy(np.ones((1, 2, 20))), headers={"content-type": NPY})

    c = Client("http://x", retries=3, backoff_s=0.001, http=httpx.Client(transport=httpx.MockTransport(handler)))
    assert c.decode(np.zeros((16, 20))).shape == (1, 2, 20) and len(calls) == 3
    dead = Client("http://127.0.0.1:9", retries=1, backoff_s=0.001, timeout=1.0)
    with pytest.raises(ServiceError, match="no answer .* after 2 tries"):
        dead.decode(np.zeros((16, 20)))


# ---- the demo's parts ----------------------------------------------------------------------------------------
def test_population_on_day_is_the_simulated_days_population(tiny_sim_cfg, tiny_sim_days):
    from alignnet.clients.loop import population_on_day

    for d, day in enumerate(tiny_sim_days):
        pop = population_on_day(tiny_sim_cfg, d)
        np.testing.assert_array_equal(pop.pd, day.population.pd)
        np.testing.assert_array_equal(pop.active, day.population.active)


def test_center_out_scores_hits_misses_and_time_to_target():
    from alignnet.clients.loop import CenterOut, TaskParams

    task = CenterOut(TaskParams(hold_s=0.2, timeout_s=1.0, center_hold_s=0.1), seed=0)
    task.update(np.zeros(2), 0.0)
    task.update(np.zeros(2), 0.15)  # held at the center: a target appears
    assert task.phase == "reach"
    target = task.goal.copy()
    task.update(np.zeros(2), 0.3)
    task.update(target, 0.5)  # enters 0.35 s after onset
    task.update(target, 0.75)  # held 0.25 s: hit
    assert task.hits == 1 and task.times == [pytest.approx(0.35)] and task.phase == "center"
    task.update(np.zeros(2), 0.8)
    task.update(np.zeros(2), 0.95)
    assert task.phase == "reach"
    task.update(np.zeros(2), 2.0)  # never reached within 1 s: miss
    assert task.misses == 1 and task.trials == 2


def test_subject_fires_for_its_intention(tiny_sim_cfg):
    from alignnet.clients.loop import Subject, SubjectParams, population_on_day

    subject = Subject(population_on_day(tiny_sim_cfg, 0), tiny_sim_cfg, SubjectParams(), seed=0)
    spikes = np.concatenate([subject.step(np.zeros(2), np.array([0.8, 0.0]), 20) for _ in range(50)])
    assert spikes.shape == (1000, tiny_sim_cfg.neural.n_channels) and set(np.unique(spikes)) <= {0.0, 1.0}
    assert subject.pos[0] > 0.5  # it moved toward the goal it was steering to
    assert 1.0 < spikes.mean() * 1000 < 200  # plausible rates (Hz per channel)


def test_headless_demo_reports(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "demo.json"
    r = subprocess.run([str(Path(sys.executable).parent / "alignnet"), "demo", "--headless", "--trials", "2",
                        "--json", str(out)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["trials"] == 2 and report["hits"] + report["misses"] == 2
    assert 0 <= report["success_rate"] <= 1 and report["decode_latency_ms"]["n"] > 50
    assert report["decode_latency_ms"]["p99"] < 200


REPLAY_ATOL = 1e-5  # online against offline, data units (export parity: ONNX Runtime and PyTorch round apart)


@pytest.fixture(scope="module")
def fitted_artifacts(tiny_dataset, tmp_path_factory):
    """Two served models whose decoded bins vary a lot against the tolerance: a Wiener filter fitted on the tiny
    dataset (the bridge decodes windows) and a causal AlignNet whose latent carries its decode (decoded one bin at a
    time, as the default model is served)."""
    from alignnet.model import DataContract
    from alignnet.model.artifacts import save_artifact
    from alignnet.training.export import export_artifact
    from alignnet.training.run import apply_overrides, load_config, train
    from tests.test_incremental import causal_model

    root = tmp_path_factory.mktemp("fitted")
    cfg, path = load_config(str(tiny_dataset / "train.yaml"))
    cfg = apply_overrides(cfg, ["model=test-wiener", "model_config.n_lags=6"])
    wiener = train(cfg, path, data=tiny_dataset / "D", out=root / "wiener")["artifact"]
    export_artifact(wiener, ("onnx",))
    causal = root / "causal"
    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=40, spike_scale=[0.7] * 16,
                            behavior_mean=[0.1, -0.1], behavior_std=[0.3, 0.3])
    save_artifact(causal, causal_model(3, lif_impl="spikingjelly"), contract)
    export_artifact(causal, ("onnx",))
    return {"wiener": wiener, "alignnet-causal": causal}


@pytest.mark.parametrize("which", ["wiener", "alignnet-causal"])
def test_replay_serves_every_bin_as_evaluate_decodes_it(which, fitted_artifacts, tiny_dataset):
    """A replay through the LSL bridge, bin by bin against `alignnet evaluate`'s newest-bin computation (eager
    PyTorch on the trained weights): each decoded sample carries its own input bin's stamp, and its value is that
    bin's offline decode. The same offline series one bin late must not pass (a one-bin delay in the live path would
    move R² by little on a weak model, but not these numbers)."""
    from alignnet.model.artifacts import load_artifact
    from alignnet.training.protocols import EvalConfig, Protocol

    folder = fitted_artifacts[which]
    engine = load_engine(folder, "onnx")
    assert engine.can_stream == (which == "alignnet-causal")  # the incremental path, and the window path
    ds = Dataset(tiny_dataset / "D")
    day, n = ds.day(2), 150
    counts, beh = day.counts[:n], day.behavior("pos")[:n]
    scorer, bridge, sent = _replay_through_bridge(engine, counts, beh, day.bin_s, 1)
    assert bridge.counts["dropped"] == 0, bridge.status()
    stamps, behavior, online = scorer.matched()
    idx = np.searchsorted(sent, stamps).clip(0, n - 1)
    assert len(stamps) == n and np.array_equal(sent[idx], stamps)  # one sample per bin, stamped with its input's
    np.testing.assert_array_equal(behavior, beh[idx].astype(np.float32))

    model, contract, _ = load_artifact(folder)
    proto = Protocol(ds, EvalConfig(window_bins=contract.window_bins, online_seconds=n * day.bin_s))
    start, truth, offline = proto.newest_bins(model, 2, np.unique(day.trial_id), contract, use_day=False)
    assert start == 0 and len(offline) == n
    assert offline.std(axis=0).min() > 1000 * REPLAY_ATOL, offline.std(axis=0)  # the decode varies
    np.testing.assert_allclose(online, offline[idx], atol=REPLAY_ATOL, rtol=0)
    late = np.concatenate([np.zeros_like(offline[:1]), offline[:-1]])
    with pytest.raises(AssertionError):  # the negative control: one bin late fails the same comparison
        np.testing.assert_allclose(online, late[idx], atol=REPLAY_ATOL, rtol=0)
    assert scorer.score()["r2"] == pytest.approx(r2(truth, offline), abs=1e-6)  # and so the online R² is evaluate's


def test_headless_demo_calibrates_live_and_reports_before_and_after(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "demo.json"
    r = subprocess.run([str(Path(sys.executable).parent / "alignnet"), "demo", "--headless", "--trials", "1",
                        "--day", "9", "--calibrate", "--calibrate-seconds", "6", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    cal = report["calibration"]
    assert cal["state"] == "done", (cal.get("error"), r.stderr[-3000:])  # why, where it failed
    # the service's gauge at both points (None until 8 latents, one a second, have been seen: this run is short)
    assert "drift_before" in cal and "drift_after" in cal
    assert report["before"]["trials"] == 1 and report["after"]["trials"] == 1
    assert cal["swapped_at_trial"] >= cal["started_trial"] >= 1

    from alignnet.service.http.settings import DEFAULT_MODELS

    # the session's calibration lived in a folder of its own: the packaged default model serves as before
    assert not list(DEFAULT_MODELS.glob("*-calibrated")), list(DEFAULT_MODELS.glob("*-calibrated"))


def test_demo_page_simulates_new_bins_and_correlates_them_with_the_incoming_ones(tmp_path):
    """The page's live simulation (the service stubbed): each step simulates the last window of cursor positions and
    keeps only the bins that are new; the correlation is that of incoming counts and simulated rates."""
    import collections

    from alignnet.clients.demo_page import Decoders, LiveSimulation, incoming_since

    rng = np.random.default_rng(0)
    loop = type("Loop", (), {})()
    loop._lock, loop.window_bins, loop.bins_total = threading.Lock(), 10, 0
    loop.cursor_bins, loop.recent = collections.deque(maxlen=10), collections.deque(maxlen=1000)
    tuning = rng.normal(size=(2, 8))
    rate = lambda cursor: np.exp(cursor @ tuning)  # noqa: E731 - (n, 2) cursor -> (n, 8) rates
    live = LiveSimulation(loop, "http://127.0.0.1:9")
    live.client = type("Stub", (), {"simulate": staticmethod(lambda b: rate(b[0].T).T[None] * 0.5)})()
    for _ in range(3):
        for _ in range(7):
            cursor = rng.normal(size=2)
            loop.cursor_bins.append(cursor)
            loop.recent.append(rng.poisson(rate(cursor[None])[0] * 0.5 + 5))
            loop.bins_total += 1
        live.step()
    index, rows = live.since(-1)
    assert index == list(range(4, 21))  # the first full window (bins 4-13), then only the 7 new bins; no repeats
    assert len(rows[0]) == 8 and live.since(index[-1]) == ([], [])
    assert live.correlation() > 0.3
    seen, counts = incoming_since(loop, 17)  # the bins after bin 17
    assert seen == [18, 19, 20] and len(counts[0]) == 8

    d = Decoders(tmp_path / "a", tmp_path, "http://127.0.0.1:9", {"x": tmp_path / "x"})
    assert d.listing()["choices"] == ["x", "a"] and d.current == "a"
    for bad in ("/etc", "../..", "a\x00b"):
        r = d.switch(bad)
        assert not r["ok"] and "under" in r["error"], r
    assert "did not answer" in d.switch("x")["error"]  # no service there
