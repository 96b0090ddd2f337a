"""The LSL bridge: binning units, and in-process outlet -> bridge -> decoded outlet loopbacks (real liblsl)."""

import time
import uuid
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import wait_until

from alignnet.service.engines import load_engine
from alignnet.service.live.lsl import Bridge, BridgeConfig
from alignnet.service.live.pipeline import Ring
from alignnet.service.live.sources import EventBinner, RegularBinner, sanitize

pylsl = pytest.importorskip("pylsl")


# ---- pure units ------------------------------------------------------------------------------------------------
def test_regular_binner_sums_counts_and_averages_behavior():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    b = RegularBinner(4, 2, "sum")
    bins, st = b.feed(x, np.arange(6.0))
    np.testing.assert_array_equal(bins, [[12, 16]])
    np.testing.assert_array_equal(st, [3.0])  # stamped with the bin's last sample
    bins, st = b.feed(x[:2], np.arange(6.0, 8.0))  # carries the partial bin over
    np.testing.assert_array_equal(bins, [[8 + 10 + 0 + 2, 9 + 11 + 1 + 3]])
    m = RegularBinner(2, 2, "mean").feed(x, np.arange(6.0))[0]
    np.testing.assert_allclose(m[0], [1, 2])


def test_event_binner_counts_per_bin_and_waits_for_lateness():
    b = EventBinner(0.02, 4, lateness_s=0.01)
    bins, st, bad = b.feed(np.array([0, 1, 1, 3, 7, np.nan]), np.array([10.0, 10.005, 10.019, 10.025, 10.03, 10.03]),
                           now=10.035)
    assert bad == 2  # channel 7 does not exist, NaN is not a channel
    np.testing.assert_array_equal(bins, [[1, 2, 0, 0]])
    np.testing.assert_allclose(st, [10.02])
    bins, st, _ = b.feed(np.zeros(0), np.zeros(0), now=10.07)
    np.testing.assert_array_equal(bins, [[0, 0, 0, 1], [0, 0, 0, 0]])
    assert b.feed(np.array([2]), np.array([10.01]), now=10.07)[2] == 1  # too late for a closed bin: dropped


def test_ring_and_sanitize():
    r = Ring(2, 3)
    r.push(np.array([[1, 1]], np.float32))
    r.push(np.array([[2, 2], [3, 3], [4, 4]], np.float32))
    np.testing.assert_array_equal(r.buf, [[2, 3, 4], [2, 3, 4]])
    x, bad = sanitize(np.array([[1, np.nan], [-1, 2], [1, 1]]), counts=True)
    assert bad == 2 and np.isfinite(x).all() and (x >= 0).all()
    x, bad = sanitize(np.array([[1, np.nan]]), counts=False, last=np.array([5.0, 6.0]))
    np.testing.assert_array_equal(x, [[1, 6]])
    x, bad = sanitize(np.array([[1.5, 1], [1e30, 0], [2, 3], [21, 0]]), counts=True, most=20)
    assert bad == 3 and x.tolist() == [[0, 1], [0, 0], [2, 3], [0, 0]]  # fractional, implausible: zeroed, counted
    x, bad = sanitize(np.array([[1.5, -0.25]]), counts=False)  # behavior is not a count
    assert bad == 0 and x.tolist() == [[1.5, -0.25]]


# ---- loopbacks -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(service_artifacts):
    return load_engine(service_artifacts[0], "onnx")




def _source(name, channels=16, rate=50.0, fmt="float32", stype="Spikes"):
    return pylsl.StreamOutlet(pylsl.StreamInfo(name, stype, channels, rate, fmt, f"src-{name}"))


def _consumer(name):
    found = pylsl.resolve_byprop("name", name, 1, 5.0)
    assert found, f"output stream {name} not found"
    inlet = pylsl.StreamInlet(found[0], processing_flags=pylsl.proc_none)
    inlet.open_stream(timeout=5.0)
    return inlet


def _drain(inlet, n, timeout=5.0):
    xs, ts = [], []
    end = time.monotonic() + timeout
    while len(ts) < n and time.monotonic() < end:
        x, t = inlet.pull_chunk(timeout=0.1, max_samples=1024)
        xs += x
        ts += t
    return np.asarray(xs, np.float32), np.asarray(ts)


@contextmanager
def bridged(engine, prefix, channels=16, rate=50.0, fmt="float32", stype="Spikes", **cfg):
    """Source outlet -> Bridge -> consumer inlet on the output, the bridge streaming; yields a namespace with
    ``name``, ``src`` (set it to None to make the source vanish), ``bridge`` and ``out``."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cfg.setdefault("resolve_timeout_s", 2.0)
    h = SimpleNamespace(name=name, src=_source(name, channels, rate, fmt, stype))
    h.bridge = Bridge(BridgeConfig(source_name=name, **cfg), lambda: engine).start()
    try:
        assert wait_until(lambda: h.bridge.state == "streaming"), h.bridge.status()
        h.out = _consumer(f"{name}-{'simulated' if cfg.get('direction') == 'simulate' else 'decoded'}")
        yield h
    finally:
        h.bridge.stop()


def _windows(counts, window):
    """Offline twin of the bridge's ring buffer: zero history, then every bin's trailing window."""
    padded = np.concatenate([np.zeros((window - 1, counts.shape[1]), np.float32), counts])
    return np.stack([padded[i:i + window].T for i in range(len(counts))])


def test_loopback_5s_at_50hz_every_hop_decoded_with_input_stamps(engine):
    with bridged(engine, "test-spikes") as h:
        counts = np.random.default_rng(0).poisson(0.8, (250, 16)).astype(np.float32)
        stamps = []
        t_next = time.monotonic()
        for row in counts:  # 5 s in real time
            t = pylsl.local_clock()
            h.src.push_sample(row, t)
            stamps.append(t)
            t_next += 0.02
            time.sleep(max(0.0, t_next - time.monotonic()))
        y, ts = _drain(h.out, 250)
    assert len(ts) == 250, h.bridge.status()  # every hop decoded, none dropped
    np.testing.assert_array_equal(ts, np.asarray(stamps))  # stamped with the input's LSL time
    assert h.bridge.counts["dropped"] == 0 and h.bridge.counts["hops"] == 250
    expect = engine.decode(_windows(counts, 20))[:, :, -1]
    np.testing.assert_allclose(y, expect, atol=1e-5)


def test_finer_rate_is_rebinned_and_events_are_binned(engine):
    with bridged(engine, "test-1k", rate=1000.0, max_lag_bins=100) as h:
        ms = (np.random.default_rng(1).random((400, 16)) < 0.05).astype(np.float32)
        t0 = pylsl.local_clock()
        stamps = t0 + np.arange(400) / 1000.0
        for i in range(0, 400, 20):
            h.src.push_chunk(ms[i:i + 20], stamps[i:i + 20].tolist())
            time.sleep(0.02)
        y, ts = _drain(h.out, 20)
    np.testing.assert_allclose(ts, stamps[19::20])
    binned = ms.reshape(20, 20, 16).sum(axis=1)
    np.testing.assert_allclose(y, engine.decode(_windows(binned, 20))[:, :, -1], atol=1e-5)

    with bridged(engine, "test-events", channels=1, rate=pylsl.IRREGULAR_RATE, max_lag_bins=100,
                 event_lateness_s=0.01) as h:
        t0 = pylsl.local_clock()
        h.src.push_chunk([[0.0], [3.0], [3.0], [99.0]], [t0, t0 + 0.005, t0 + 0.03, t0 + 0.031])
        y, ts = _drain(h.out, 2, timeout=3.0)
    assert len(ts) >= 2 and h.bridge.counts["dropped"] == 1  # channel 99 does not exist
    np.testing.assert_allclose(ts[:2], [t0 + 0.02, t0 + 0.04], atol=1e-9)
    first = np.zeros((1, 16), np.float32)
    first[0, [0, 3]] = 1
    np.testing.assert_allclose(y[0], engine.decode(_windows(first, 20))[0, :, -1], atol=1e-5)


def test_source_loss_reconnects_and_nan_samples_are_survived(engine):
    with bridged(engine, "test-lost", resolve_timeout_s=1.0) as h:
        bridge, out = h.bridge, h.out
        bad = np.ones(16, np.float32)
        bad[3] = np.nan
        for row in (np.ones(16, np.float32), bad, np.ones(16, np.float32)):
            h.src.push_sample(row, pylsl.local_clock())
        _, ts = _drain(out, 3)
        assert len(ts) == 3 and bridge.counts["dropped"] == 1
        h.src = None  # the source vanishes
        assert wait_until(lambda: bridge.counts["reconnects"] == 1), bridge.status()
        assert bridge.state in ("reconnecting", "resolving")
        h.src = _source(h.name)  # and comes back
        assert wait_until(lambda: bridge.state == "streaming"), bridge.status()
        time.sleep(0.3)
        h.src.push_sample(np.ones(16, np.float32), pylsl.local_clock())
        _, ts = _drain(out, 1)
        assert len(ts) == 1  # the same output stream carries on


def _metric(registry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, {"direction": "decode", **labels})


def test_a_source_off_its_declared_rate_is_refused_until_it_runs_right(engine):
    """A source declared 50 Hz whose stamps run at 500 Hz (or 5 Hz) would be decoded as ten times as many (or a
    tenth as many) 20-ms bins: it is refused, flagged in /health and the metrics, and taken again once right."""
    from prometheus_client import CollectorRegistry

    from alignnet.service.live.lsl import BridgeMetrics

    registry = CollectorRegistry()
    name = f"test-rate-{uuid.uuid4().hex[:8]}"
    src = _source(name)
    bridge = Bridge(BridgeConfig(source_name=name, resolve_timeout_s=2.0, max_lag_bins=10_000), lambda: engine,
                    BridgeMetrics(registry)).start()
    ones = np.ones((1, 16), np.float32)
    try:
        assert wait_until(lambda: bridge.state == "streaming"), bridge.status()
        t = pylsl.local_clock()
        for period, n in ((0.002, 1200), (0.02, 240), (0.2, 40)):  # 500 Hz, then 50 Hz, then 5 Hz
            stamps = t + period * np.arange(1, n + 1)
            for k in range(0, n, 20):  # paced (500 samples a second), so that the 1-s inlet buffer keeps them all
                src.push_chunk(np.repeat(ones, len(stamps[k:k + 20]), 0), stamps[k:k + 20].tolist())
                time.sleep(0.04)
            t = stamps[-1]
            want_off = period != 0.02
            assert wait_until(lambda want_off=want_off, period=period: bridge.rate.off == want_off
                              and abs(bridge.rate.measured * period - 1) < 0.05,
                              timeout=10), (period, bridge.status())  # the first window may straddle two rates
            if want_off:
                assert bridge.state == "rate mismatch" and "declares 50 Hz" in bridge.error, bridge.status()
                assert _metric(registry, "alignnet_lsl_rate_mismatch", stream=name) == 1.0
            else:
                assert bridge.state == "streaming" and bridge.error is None
                assert _metric(registry, "alignnet_lsl_rate_mismatch", stream=name) == 0.0
        # a 10x-fast source is judged on 2 s worth of declared samples (100), so at most its first 100 are decoded
        assert _metric(registry, "alignnet_lsl_samples_dropped_total", stream=name, reason="rate") >= 1100
        assert abs(_metric(registry, "alignnet_lsl_rate_hz", stream=name) - 5.0) < 0.3
    finally:
        bridge.stop()


def test_fractional_and_implausible_counts_are_dropped_like_nan(engine):
    with bridged(engine, "test-counts") as h:
        for value in (1.0, 1.5, 1e30, 1.0):
            h.src.push_sample(np.full(16, value, np.float32), pylsl.local_clock())
        _, ts = _drain(h.out, 4)
        assert len(ts) == 4 and h.bridge.counts["dropped"] == 2, h.bridge.status()


@pytest.mark.parametrize("channels,rate,expect", [(15, 50.0, "15 channels"), (16, 33.0, "33 Hz"),
                                                  (16, 25.0, "25 Hz")])
def test_mismatched_source_is_refused(engine, channels, rate, expect):
    name = f"test-bad-{uuid.uuid4().hex[:8]}"
    src = _source(name, channels=channels, rate=rate)  # noqa: F841 (kept alive while the bridge looks at it)
    bridge = Bridge(BridgeConfig(source_name=name, resolve_timeout_s=1.0), lambda: engine).start()
    try:
        assert wait_until(lambda: bridge.state == "refused"), bridge.status()
        assert expect in bridge.error
    finally:
        bridge.stop()


def test_reverse_direction_simulates_spikes(engine):
    with bridged(engine, "test-beh", channels=2, stype="Behavior", direction="simulate") as h:
        beh = np.random.default_rng(3).standard_normal((10, 2)).astype(np.float32)
        stamps = [pylsl.local_clock() + i * 0.02 for i in range(10)]
        for row, t in zip(beh, stamps):
            h.src.push_sample(row, t)
        rates, ts = _drain(h.out, 10)
    np.testing.assert_array_equal(ts, stamps)
    padded = np.concatenate([np.zeros((19, 2), np.float32), beh])  # behavior_mean is 0 for the test contract
    windows = np.stack([padded[i:i + 20].T for i in range(10)])
    np.testing.assert_allclose(rates, engine.simulate(windows)[:, :, -1], atol=1e-5)
    assert rates.shape == (10, 16) and (rates >= 0).all()


def test_app_runs_the_bridge_and_reports_it(service_artifacts):
    from conftest import service_client

    from alignnet.service.http.app import create_app
    from alignnet.service.http.settings import Settings

    name = f"test-app-{uuid.uuid4().hex[:8]}"
    src = _source(name)
    settings = Settings(artifact=service_artifacts[0], lsl_decode=True, lsl_source_name=name,
                        lsl_resolve_timeout_s=1.0)
    with service_client(create_app(settings)) as client:
        assert wait_until(lambda: client.get("/health").json()["lsl"]["state"] == "streaming")
        out = _consumer(f"{name}-decoded")
        for _ in range(5):
            src.push_sample(np.ones(16, np.float32), pylsl.local_clock())
        assert len(_drain(out, 5)[1]) == 5
        lsl = client.get("/health").json()["lsl"]
        assert lsl["bridges"][0]["hops"] == 5 and lsl["bridges"][0]["source"]["name"] == name
        text = client.get("/metrics").text
        assert f'alignnet_lsl_hops_total{{direction="decode",stream="{name}"}} 5.0' in text
        assert "alignnet_lsl_lag_seconds_bucket" in text
        del src
        assert wait_until(lambda: client.get("/health").json()["lsl"]["state"] in ("reconnecting", "resolving"))
        # at least the one loss (a source that lingers in discovery can be found and lost once more before this)
        line = f'alignnet_lsl_reconnects_total{{direction="decode",stream="{name}"}} '
        found = [float(x[len(line):]) for x in client.get("/metrics").text.splitlines() if x.startswith(line)]
        assert found and found[0] >= 1.0, found


def test_integer_count_streams_are_read_in_their_own_type(engine):
    with bridged(engine, "test-int16", fmt="int16") as h:
        counts = np.random.default_rng(4).poisson(1.0, (5, 16)).astype(np.int16)
        for row in counts:
            h.src.push_sample(row.tolist(), pylsl.local_clock())
        y, ts = _drain(h.out, 5)
    assert len(ts) == 5
    np.testing.assert_allclose(y, engine.decode(_windows(counts.astype(np.float32), 20))[:, :, -1], atol=1e-5)


def test_a_backlog_is_skipped_so_lag_cannot_grow(engine):
    with bridged(engine, "test-lag", max_lag_bins=4) as h:
        t0 = pylsl.local_clock()
        stamps = (t0 - 0.02 * np.arange(40)[::-1]).tolist()  # 40 bins arrive at once: the bridge is 0.8 s behind
        h.src.push_chunk(np.ones((40, 16), np.float32), stamps)
        y, ts = _drain(h.out, 40, timeout=1.5)
    c = h.bridge.counts
    assert c["bins"] == 40 and c["pushed"] + c["dropped"] == 40
    assert c["dropped"] >= 40 - 4 - 4  # at most a few hops decoded before the backlog was seen
    assert ts[-1] == stamps[-1]  # the newest bin is always decoded


def test_bridge_calibrates_the_session_without_labels_on_its_first_seconds(tiny_dataset, tmp_path):
    """`serve --lsl --calibrate-seconds S`: the first S seconds are decoded with the base model and collected; a
    zero-label calibration then swaps in the session's calibrated model, which goes on decoding the stream."""
    from conftest import service_client

    from alignnet.cli.main import main as cli
    from alignnet.service.http.app import create_app
    from alignnet.service.http.settings import Settings

    run = tmp_path / "run"
    assert cli(["train", str(tiny_dataset / "train.yaml"), "--data", str(tiny_dataset / "D"), "--out", str(run),
                "--set", "train.days=[0,1]"]) == 0
    assert cli(["export", str(run / "artifact"), "--formats", "onnx"]) == 0
    name = f"test-cal-{uuid.uuid4().hex[:8]}"
    src = _source(name)
    settings = Settings(artifact=run / "artifact", lsl_decode=True, lsl_source_name=name, lsl_resolve_timeout_s=1.0,
                        lsl_calibrate_seconds=1.2, calibration_dir=tmp_path / "cal", lsl_max_lag_bins=200)
    counts = np.random.default_rng(0).poisson(0.8, (120, 16)).astype(np.float32)
    with service_client(create_app(settings)) as client:
        assert wait_until(lambda: client.get("/health").json()["lsl"]["state"] == "streaming")
        out = _consumer(f"{name}-decoded")
        t0 = pylsl.local_clock()
        for k in range(0, 70, 10):  # the source's outlet buffers 1 s: push as a live source would
            src.push_chunk(counts[k:k + 10], (t0 + 0.02 * np.arange(k, k + 10)).tolist())
            time.sleep(0.1)
        assert len(_drain(out, 70, timeout=5)[1]) >= 50  # decoded meanwhile by the base model (the first ones may
        #                                                   go out before the consumer is connected)
        assert wait_until(lambda: client.app.state.alignnet.calibrator.status["state"] != "idle"), \
            str(client.get("/health").json()["lsl"]["bridges"][0])
        status = client.app.state.alignnet.calibrator.wait(120)
        assert status["state"] == "done" and status["mode"] == "zero-label" and status["bins"] == 60, status
        assert client.get("/model").json()["artifact"].startswith("lsl-")
        assert client.app.state.alignnet.engine.folder.parent == tmp_path / "cal"
        block = client.get("/health").json()["lsl"]["bridges"][0]["calibration_block"]
        assert block["state"] == "handed over"
        src.push_chunk(counts[70:80], (t0 + 0.02 * np.arange(70, 80)).tolist())
        assert len(_drain(out, 10, timeout=5)[1]) == 10  # the calibrated model decodes the same stream
        assert client.get("/health").json()["lsl"]["bridges"][0]["state"] == "streaming"


def test_one_service_decodes_several_sources_with_batched_hops(service_artifacts):
    """`serve --lsl --lsl-source A --lsl-source B`: each source to its own outlet, each output stamped with its own
    input's time and equal to decoding that source alone; the sources' hops share engine calls."""
    from conftest import service_client

    from alignnet.service.http.app import create_app
    from alignnet.service.http.settings import Settings

    engine = load_engine(service_artifacts[0], "onnx")
    names = [f"multi-{k}-{uuid.uuid4().hex[:6]}" for k in range(3)]
    srcs = [_source(n) for n in names]
    settings = Settings(artifact=service_artifacts[0], lsl_decode=True, lsl_sources=names, lsl_batch_wait_s=0.005,
                        lsl_batch_workers=1, lsl_resolve_timeout_s=1.0)  # one worker: it batches what waits
    rng = np.random.default_rng(1)
    with service_client(create_app(settings)) as client:
        assert wait_until(lambda: client.get("/health").json()["lsl"]["state"] == "streaming", 20)
        outs = [_consumer(f"{n}-decoded") for n in names]
        counts = rng.poisson(1.0, (len(names), 8, 16)).astype(np.float32)
        stamps = pylsl.local_clock() + np.arange(8) * 0.02
        for i in range(8):  # the sources' bins arrive together, as from several arrays on one rig
            for src, c in zip(srcs, counts):
                src.push_sample(c[i], stamps[i])
            time.sleep(0.02)
        for k, out in enumerate(outs):
            x, ts = _drain(out, 8)
            np.testing.assert_array_equal(ts, stamps)
            want = engine.decode(_windows(counts[k], engine.contract.window_bins))[:, :, -1]
            np.testing.assert_allclose(x, want, atol=1e-5)
        health = client.get("/health").json()["lsl"]
        assert [b["source"]["name"] for b in health["bridges"]] == names
        batching = health["batching"]
        assert batching["windows"] == 24 and batching["calls"] < 24 and batching["largest_batch"] > 1, batching
        text = client.get("/metrics").text
        for n in names:
            assert f'alignnet_lsl_hops_total{{direction="decode",stream="{n}"}} 8.0' in text


def test_bench_streams_reports_every_stream(service_artifacts, tmp_path):
    """`alignnet bench streams`: generator process -> one service -> every decoded stream timed (no timing asserted:
    the figures are the benchmark's)."""
    import json

    from alignnet.cli.main import main

    out = tmp_path / "streams.json"
    assert main(["bench", "streams", "--artifact", str(service_artifacts[0]), "--streams", "2", "--seconds", "2",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["streams"] == 2 and len(r["per_stream"]) == 2 and r["received_fraction"] > 0.5, r
    assert all(s["hops"] > 0 and s["p99_ms"] is not None for s in r["per_stream"])
    assert r["batching"]["windows"] > 0 and r["service_peak_rss_mb"] > 0
