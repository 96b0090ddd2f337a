"""Incremental decoding (model/incremental.py): each new bin from cached columns gives the window decoder's
newest bin, through export, the engine and the LSL bridge."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from alignnet.model import DataContract, create_model
from alignnet.model.artifacts import read_config, save_artifact
from alignnet.model.incremental import STREAM_FILE, IncrementalDecoder, stream_weights
from alignnet.model.streaming import offline_twin
from alignnet.service.engines import load_engine
from alignnet.training.export import export_artifact
from tests.conftest import wait_until

STREAM_ATOL = 2e-5  # stream against the window's newest bin, normalised units


def causal_model(seed: int, window: int = 40, day_channels: int | None = None, lif_impl: str = "plain", **config):
    """A causal test AlignNet with batch norms that are not the identity (so folding them is tested), whose latent
    path carries a real part of the decode: the bottleneck and the deepest upsampling are scaled up (tenfold) and
    the output layer twentyfold, so zeroing the latent moves the newest bin by about a thousand times the stream
    test's tolerance (``latent_effect``). A freshly drawn model's latent moved it by 2e-5, the tolerance itself, so
    a stream that got the latent wrong would still have passed."""
    torch.manual_seed(seed)
    model = create_model("test-alignnet-causal", window_bins=window, lif_impl=lif_impl, **config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.spike_bottleneck.conv.weight.mul_(10.0)
        model.spike_bottleneck.conv.bias.add_(0.5)
        model.behavior_decoder.ups[-1].weight.mul_(10.0)
        model.behavior_out[2].weight.mul_(20.0)
    if day_channels:
        model.add_day("d1", day_channels)
    return model.eval()


def window_newest(model, x: np.ndarray, day: str | None = None) -> np.ndarray:
    """(T, C) normalised bins -> (T, D): the newest bin of the window ending at each bin, zero history first."""
    def decode(w):
        with torch.no_grad():
            return model.decode(torch.from_numpy(w), day).numpy()

    return offline_twin(decode, x, model.config.window_bins)


def latent_effect(model, x: np.ndarray, day: str | None = None) -> float:
    """Mean |newest bin - the same with the spike latent zeroed| over the bins of ``x`` (T, C): how much of the
    decode flows through the bottleneck rather than the skip connections."""
    with_latent = window_newest(model, x, day)
    hook = model.spike_bottleneck.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    try:
        without = window_newest(model, x, day)
    finally:
        hook.remove()
    return float(np.abs(with_latent - without).mean())


@pytest.mark.parametrize("window,day_channels,v_reset,blocks", [
    (40, None, 0.0, "end"), (37, 11, 0.0, "end"), (40, None, -0.2, "end"), (37, 11, 0.0, "start")])
def test_stream_gives_each_windows_newest_bin(window, day_channels, v_reset, blocks):
    """Bin by bin, every phase of the pooling blocks (window lengths that are and are not multiples of 4), with and
    without a day's read-in of other channels, with a reset potential other than 0, and two streams side by side;
    blocks at the window's end (the served variant) and at its start (artifacts saved before that)."""
    model = causal_model(0, window, day_channels, v_reset=v_reset, block_alignment=blocks)
    day = "d1" if day_channels else None
    n_in = day_channels or 16
    rng = np.random.default_rng(1)
    x = np.log1p(rng.poisson(0.7, (2, 150, n_in))).astype(np.float32)
    assert latent_effect(model, x[0], day) > 200 * STREAM_ATOL  # a stream that mishandled the latent would show
    dec = IncrementalDecoder(stream_weights(model, day), window, batch=2)
    got = dec.run(x.transpose(0, 2, 1))  # (2, D, T)
    for b in range(2):
        want = window_newest(model, x[b], day)
        assert want.std(axis=0).min() > 100 * STREAM_ATOL  # the decoded bins vary: equality says something
        np.testing.assert_allclose(got[b].T, want, atol=STREAM_ATOL, rtol=0)
    # reset starts afresh: the same stream gives the same numbers again
    dec.reset()
    np.testing.assert_allclose(dec.run(x[:, :30].transpose(0, 2, 1)), got[..., :30], atol=0)


def test_rows_at_different_phases_step_together():
    """Rows keep their own clocks: a row that skips steps, one opened later and one restarted mid-way each get
    their own windows' newest bins when stepped in one batch with the others."""
    model = causal_model(1, 40)
    rng = np.random.default_rng(2)
    x = np.log1p(rng.poisson(0.7, (3, 90, 16))).astype(np.float32)
    dec = IncrementalDecoder(stream_weights(model), 40, batch=2)
    got: list[list[np.ndarray]] = [[], [], []]
    seen = [0, 0, 0]
    for k in range(120):
        rows = [0] + ([1] if k % 2 else [])
        if k == 7:
            assert dec.open() == 2
        if k >= 7:
            rows.append(2)
        if k == 50:  # row 0 restarts: a new source on the same row
            dec.reset([0])
            got[0], seen[0] = [], 0
        rows = [r for r in rows if seen[r] < 60]
        if not rows:
            continue
        y = dec.step_rows(rows, np.stack([x[r, seen[r]] for r in rows]))
        for r, out in zip(rows, y):
            got[r].append(out)
            seen[r] += 1
    for r in range(3):
        assert len(got[r]) == 60
        np.testing.assert_allclose(np.stack(got[r]), window_newest(model, x[r, :60]), atol=STREAM_ATOL, rtol=0)


def test_sources_pushing_from_many_threads_are_batched_and_each_gets_its_own_bins(causal_artifact):
    import threading

    engine = load_engine(causal_artifact)
    counts = np.random.default_rng(7).poisson(0.9, (6, 50, 16)).astype(np.float32)
    streams = [engine.open_stream() for _ in range(6)]
    outs: list = [None] * 6

    def run(i):
        outs[i] = np.concatenate([streams[i].push(counts[i, k:k + 1]) for k in range(50)])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        np.testing.assert_allclose(outs[i], offline_twin(engine.decode, counts[i], 40), atol=1e-4)
    assert streams[0].rows.stats["items"] == 300 and streams[0].rows.stats["steps"] <= 300
    # a caller holding several sources' bins at once (FALCON's batch) steps them in one go
    from alignnet.service.live.pipeline import LiveStream

    batch = [engine.open_stream() for _ in range(3)]
    got = np.stack([LiveStream.push_many(batch, counts[:3, k]) for k in range(50)], axis=1)  # (3, 50, D)
    for i in range(3):
        np.testing.assert_allclose(got[i], outs[i], atol=1e-4)
    with pytest.raises(ValueError, match="once"):
        batch[0].batcher.run_many(batch[0].rows, [(batch[0].row, counts[0, :1]), (batch[0].row, counts[0, :1])])


def test_submitted_bins_come_back_in_order_batched_on_the_pools_thread(causal_artifact, monkeypatch):
    """The LSL bridges' way in: ``submit`` returns at once, the pool's thread steps every waiting source's bins in
    one batch and its output thread calls each back with its own outputs, in order; a burst of several bins, a
    failing callback and a step that fails are each handled; the threads end when idle and the next bin starts
    them again."""
    import threading

    from alignnet.service.live.batcher import Batcher

    monkeypatch.setattr(Batcher, "IDLE_S", 0.3)
    engine = load_engine(causal_artifact)
    counts = np.random.default_rng(8).poisson(0.9, (5, 60, 16)).astype(np.float32)
    batcher = Batcher(wait_s=0.005)
    streams = [engine.open_stream(batcher) for _ in range(5)]
    rows = streams[0].rows
    steps0, items0 = rows.stats["steps"], rows.stats["items"]
    got: dict[int, list] = {i: [] for i in range(5)}
    callers: set = set()
    errors: list = []

    def callback(i):
        def done(y, error):
            callers.add(threading.current_thread().name)
            if error is not None:
                errors.append(error)
            else:
                got[i].append(y)
            if i == 4:
                raise RuntimeError("a broken consumer")  # logged; the other sources still get theirs
        return done

    for k in range(0, 60, 3):  # each source submits bins one at a time, except source 0: three at once
        for i in range(5):
            if i == 0:
                streams[i].submit(counts[i, k:k + 3], callback(i))
            else:
                for j in range(3):
                    streams[i].submit(counts[i, k + j:k + j + 1], callback(i))
    assert wait_until(lambda: all(sum(len(y) for y in got[i]) == 60 for i in range(5)), 20), \
        {i: len(v) for i, v in got.items()}
    assert callers == {"live-batcher-out"} and not errors
    for i in range(5):
        np.testing.assert_allclose(np.concatenate(got[i]), offline_twin(engine.decode, counts[i], 40),
                                   atol=1e-4)
    assert rows.stats["items"] - items0 == 300 and rows.stats["steps"] - steps0 < 150, rows.stats  # batched
    assert wait_until(batcher.idle, 5)  # idle: both threads ended
    bad = []
    with pytest.raises(ValueError):  # counts of the wrong channels are refused at the door
        streams[1].submit(np.zeros((1, 3), np.float32), callback(1))
    batcher.submit(rows, np.zeros((1, 3), np.float32), streams[1].row, lambda y, error: bad.append((y, error)))
    assert wait_until(lambda: bad, 5)
    assert bad[0][0] is None and isinstance(bad[0][1], ValueError)
    streams[2].submit(counts[2, :1], callback(2))  # the pool goes on after a failed step
    assert wait_until(lambda: sum(len(y) for y in got[2]) == 61, 5)


def test_stream_weights_refuse_what_cannot_stream():
    with pytest.raises(ValueError, match="causal"):
        stream_weights(create_model("test-alignnet").eval())
    with pytest.raises(ValueError, match="eval mode"):
        stream_weights(causal_model(0).train())


def test_export_of_blocks_at_the_windows_end_passes_its_parity_checks_and_streams(tmp_path):
    """The window graphs (torch.where between the two upsamplings) and the stream of block_alignment='end' export
    and match the eager model."""
    folder = tmp_path / "a"
    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=37, spike_scale=[0.7] * 16,
                            behavior_mean=[0.5, -1.0], behavior_std=[2.0, 3.0])
    save_artifact(folder, causal_model(4, window=37, lif_impl="spikingjelly", block_alignment="end"), contract)
    report = export_artifact(folder, ("onnx",))
    assert report[STREAM_FILE]["written"] and report[STREAM_FILE]["bins_over_atol"] == 0, report[STREAM_FILE]
    assert json.loads((folder / "config.json").read_text())["model_config"]["block_alignment"] == "end"


@pytest.fixture(scope="module")
def causal_artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inc") / "a"
    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=40, spike_scale=[0.7] * 16,
                            behavior_mean=[0.5, -1.0], behavior_std=[2.0, 3.0])
    save_artifact(folder, causal_model(3, lif_impl="spikingjelly"), contract)
    report = export_artifact(folder, ("onnx",))
    assert report[STREAM_FILE]["written"] and report[STREAM_FILE]["bins_over_atol"] == 0
    assert report[STREAM_FILE]["max_abs_diff"] <= 1e-4
    return folder


def test_export_writes_the_stream_and_the_engine_streams_the_newest_bins(causal_artifact):
    config = read_config(causal_artifact)
    assert STREAM_FILE in config["files"] and config["export"]["stream"]["window_bins"] == 40
    engine = load_engine(causal_artifact)
    assert engine.can_stream
    counts = np.random.default_rng(4).poisson(0.9, (120, 16)).astype(np.float32)
    want = offline_twin(lambda w: engine.decode(w), counts, 40)  # data units, whole windows
    live = engine.open_stream()
    got = np.concatenate([live.push(counts[:7]), live.push(counts[7:8]), live.push(counts[8:])])
    np.testing.assert_allclose(got, want, atol=1e-4)
    # a model swapped in mid-stream continues from the ring buffer's window
    other = engine.open_stream()
    other.prime(counts[40:80])
    np.testing.assert_allclose(other.push(counts[80:]), want[80:], atol=1e-4)


def test_export_leaves_out_a_stream_that_does_not_match_the_window_graph(tmp_path, monkeypatch):
    """A stream off in every bin is not written (and an older one is removed): the artifact serves its window graphs,
    which passed their own checks, and the live path decodes windows."""
    import alignnet.training.export as export

    folder = tmp_path / "a"
    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=40, spike_scale=[0.7] * 16,
                            behavior_mean=[0.0, 0.0], behavior_std=[1.0, 1.0])
    save_artifact(folder, causal_model(5, lif_impl="spikingjelly"), contract)
    export_artifact(folder, ("onnx",))
    assert (folder / STREAM_FILE).is_file()
    real = export.stream_weights

    def off_by_a_bit(model, day=None):
        w = real(model, day)
        w["dec0.b"] = w["dec0.b"] + 0.05
        return w

    monkeypatch.setattr(export, "stream_weights", off_by_a_bit)
    report = export_artifact(folder, ("onnx",))
    assert report[STREAM_FILE]["written"] is False and report[STREAM_FILE]["median_abs_diff"] > 1e-3
    config = read_config(folder)
    assert STREAM_FILE not in config["files"] and "stream" not in config["export"]
    assert not (folder / STREAM_FILE).exists() and (folder / "decode.onnx").is_file()
    assert not load_engine(folder).can_stream

    # a few bins off by little pass (spikes that rounding flips); a single bin far off does not: how far any bin
    # may differ is bounded, not only how many
    monkeypatch.setattr(export, "stream_weights", real)

    def decoder_off_in(bins: int, by: float):
        class Off(IncrementalDecoder):
            def run(self, x):
                y = super().run(x)
                y[..., 100:100 + bins] += by
                return y
        return Off

    for bins, by, written in ((3, 5e-4, True), (1, export.MAX_SHORTCUT_DIFF * 2, False)):
        monkeypatch.setattr(export, "IncrementalDecoder", decoder_off_in(bins, by))
        report = export_artifact(folder, ("onnx",))[STREAM_FILE]
        assert report["written"] is written and report["bins_over_atol"] == bins, report
        assert (folder / STREAM_FILE).is_file() is written


def test_a_window_no_longer_than_the_receptive_field_gets_no_stream(tmp_path):
    """Its newest bin sees the window's zero padding, which a stream cannot: export names that and leaves it out."""
    folder = tmp_path / "short"
    contract = DataContract(n_channels=16, bin_s=0.1, window_bins=8, spike_scale=[0.7] * 16,
                            behavior_mean=[0.0, 0.0], behavior_std=[1.0, 1.0])
    save_artifact(folder, causal_model(6, window=8, lif_impl="spikingjelly"), contract)
    report = export_artifact(folder, ("onnx",))
    assert report[STREAM_FILE] == {"written": False, "receptive_field": 8, "window_bins": 8,
                                   "reason": "window no longer than the receptive field"}
    assert not load_engine(folder).can_stream


def test_non_causal_artifacts_decode_windows(service_artifacts):
    engine = load_engine(service_artifacts[0])
    assert not engine.can_stream
    with pytest.raises(Exception, match="re-export"):
        engine.open_stream()


def test_lsl_bridge_decodes_incrementally_with_the_windows_numbers(causal_artifact):
    pylsl = pytest.importorskip("pylsl")
    import uuid

    from alignnet.service.live.lsl import Bridge, BridgeConfig
    from tests.conftest import wait_until

    engine = load_engine(causal_artifact)
    counts = np.random.default_rng(6).poisson(0.8, (150, 16)).astype(np.float32)
    outs = {}
    for incremental in (True, False):
        name = f"inc-{uuid.uuid4().hex[:8]}"
        src = pylsl.StreamOutlet(pylsl.StreamInfo(name, "Spikes", 16, 50.0, "float32", f"src-{name}"))
        bridge = Bridge(BridgeConfig(source_name=name, resolve_timeout_s=2.0, incremental=incremental),
                        lambda: engine).start()
        try:
            assert wait_until(lambda b=bridge: b.state == "streaming"), bridge.status()
            assert bridge.status()["decoding"] in (("incremental",) if incremental else ("window", "receptive field"))
            found = pylsl.resolve_byprop("name", f"{name}-decoded", 1, 5.0)
            inlet = pylsl.StreamInlet(found[0], processing_flags=pylsl.proc_none)
            inlet.open_stream(timeout=5.0)
            t0 = pylsl.local_clock() - 0.02 * len(counts)  # stamped at the declared 50 Hz, sent 5x as fast
            for k, row in enumerate(counts):
                src.push_sample(row, t0 + 0.02 * k)
                time.sleep(0.004)
            ys: list = []
            end = time.monotonic() + 10
            while len(ys) < len(counts) and time.monotonic() < end:
                ys += inlet.pull_chunk(timeout=0.1, max_samples=1024)[0]
            assert bridge.counts["dropped"] == 0, bridge.status()
            outs[incremental] = np.asarray(ys, np.float32)
        finally:
            bridge.stop()
            del src
    assert outs[True].shape == outs[False].shape == (150, 2)
    np.testing.assert_allclose(outs[True], outs[False], atol=1e-4)


def test_the_route_raises_a_failed_step_on_the_bridges_thread_and_drops_stale_outputs(causal_artifact):
    """What the batcher's thread hands a stream's route: a failed step is raised where the bridge reports and
    reconnects; the outputs of a route since closed (a new model or source) are counted dropped, not pushed; the
    bins in flight are given back either way, and a stream with ``limit`` in flight waits (the one lag policy)."""
    from alignnet.service.live.pipeline import IncrementalRoute, Lag, Ring

    engine = load_engine(causal_artifact)
    dropped, pushed = [], []
    lag = Lag(10, 1, lambda n, why: dropped.append((n, why)))
    route = IncrementalRoute(engine, Ring(16, 40), lag, lambda y, t: pushed.append(t), None, prime=False)
    lag.take(3)
    route._back([0.0, 0.02], None, RuntimeError("step failed"))
    assert lag.in_flight == 1
    with pytest.raises(RuntimeError, match="step failed"):
        route.push(np.zeros((1, 16), np.float32), np.zeros(1))
    route.close()
    route._back([0.0], np.zeros((1, 2), np.float32), None)  # a closed route's output
    assert dropped == [(1, "reload")] and not pushed and lag.in_flight == 0
    assert lag.newest(list(range(12))) == [11] and dropped[-1] == (11, "lag")
    lag.take(12)  # a burst beyond the limit goes when nothing is out
    with pytest.raises(RuntimeError, match="gave nothing back"):
        lag.take(1, timeout=0.05)
