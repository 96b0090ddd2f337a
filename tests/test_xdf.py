"""XDF sessions: the writer against pyxdf, import of recorded streams into a day, the service's outlet metadata, and a
LabRecorder-style round trip: source -> service -> XDF -> `alignnet replay file.xdf` -> the live run's online R²."""

import json
import threading
import uuid

import numpy as np
import pytest

from alignnet.recordings.dataset import DataError, Dataset
from alignnet.recordings.xdf import XdfWriter, channel_labels, desc, import_xdf, info_xml, load_streams, meta

pylsl = pytest.importorskip("pylsl")
pyxdf = pytest.importorskip("pyxdf")


def _session(path, counts, beh, stamps, spike_rate=50.0, extra=()):
    with XdfWriter(path) as w:
        w.add_stream(1, info_xml("rig", "Spikes", counts.shape[1], spike_rate, "float32", "rig-s"), "float32",
                     counts.shape[1])
        w.add_stream(2, info_xml("rig-beh", "Behavior", beh.shape[1], 50.0, "double64", "rig-b", ["x", "y"]),
                     "double64", beh.shape[1])
        w.add_stream(3, info_xml("events", "Markers", 1, 0.0, "string", "rig-m"), "string", 1)
        for i in range(0, len(stamps), 37):  # chunks of any size, as a recorder writes them
            w.samples(1, counts[i:i + 37], stamps[i:i + 37])
            w.samples(2, beh[i:i + 37], stamps[i:i + 37])
        w.samples(3, [["trial start"]], stamps[:1])
        w.clock_offset(1, float(stamps[0]), 0.0)
        w.clock_offset(2, float(stamps[0]), 0.0)
        for sid, x, t in extra:
            w.samples(sid, x, t)


def test_writer_is_read_back_by_pyxdf_and_imports_to_the_bins_sent(tmp_path, rng):
    n = 300
    stamps = 1000.0 + np.arange(1, n + 1) * 0.02
    counts = rng.poisson(1.0, (n, 8)).astype(np.float32)
    beh = np.cumsum(rng.normal(size=(n, 2)), 0)
    _session(tmp_path / "s.xdf", counts, beh, stamps)
    streams = {meta(s, "name"): s for s in load_streams(tmp_path / "s.xdf", dejitter=False)}
    np.testing.assert_array_equal(streams["rig"]["time_stamps"], stamps)
    np.testing.assert_array_equal(streams["rig"]["time_series"], counts)
    assert streams["events"]["time_series"] == [["trial start"]]
    assert channel_labels(streams["rig-beh"]) == ["x", "y"]
    day = import_xdf(tmp_path / "s.xdf", None, None)  # the stream's own 20-ms bins, no smoothing
    assert day.bin_s == pytest.approx(0.02) and day.n_bins == n
    np.testing.assert_array_equal(day.counts, counts)
    np.testing.assert_allclose(day.pos, beh, atol=1e-5)
    wider = import_xdf(tmp_path / "s.xdf", 0.04, 0.0)  # re-binned: counts summed in pairs
    np.testing.assert_array_equal(wider.counts, counts.reshape(-1, 2, 8).sum(1))


def test_spike_event_streams_import_and_bad_sessions_are_named(tmp_path, rng):
    from alignnet.cli.main import main

    t = np.sort(rng.uniform(10.0, 20.0, 4000))
    ch = rng.integers(0, 6, len(t)).astype(np.float32)[:, None]
    bt = 10.0 + np.arange(1, 501) * 0.02
    with XdfWriter(tmp_path / "ev.xdf") as w:
        w.add_stream(1, info_xml("units", "Spikes", 1, 0.0, "float32", "u"), "float32", 1)
        w.add_stream(2, info_xml("hand", "Behavior", 2, 50.0, "float32", "h"), "float32", 2)
        w.samples(1, ch, t)
        w.samples(2, np.stack([np.sin(bt), np.cos(bt)], 1), bt)
    assert main(["data", "import", str(tmp_path / "ev.xdf"), "--out", str(tmp_path / "D"), "--bin-ms", "20"]) == 0
    day = Dataset(tmp_path / "D").day(0)
    assert day.n_channels == 6 and day.bin_s == pytest.approx(0.02)
    inside = (t >= day.time_s[0]) & (t < day.time_s[-1] + 0.02)
    assert day.counts.sum() == inside.sum()  # every spike inside the session lands in a bin

    (tmp_path / "junk.xdf").write_bytes(b"XDF:garbage")
    with pytest.raises(DataError, match="not a readable XDF"):
        import_xdf(tmp_path / "junk.xdf", None, None)
    n = 100
    stamps = 5.0 + np.arange(n) * 0.02
    _session(tmp_path / "two.xdf", np.ones((n, 4), np.float32), rng.normal(size=(n, 2)), stamps,
             extra=())
    with pytest.raises(DataError, match="no spike stream named or typed 'nope'.*'rig'"):
        import_xdf(tmp_path / "two.xdf", None, None, spikes="nope")
    with pytest.raises(DataError, match="spike counts must be whole numbers"):
        _session(tmp_path / "frac.xdf", np.full((n, 4), 0.5, np.float32), rng.normal(size=(n, 2)), stamps)
        import_xdf(tmp_path / "frac.xdf", None, None)


def _live_run(engine, counts, beh, bin_s, path):
    """Replay through a bridge on ``engine`` while a recorder writes the three streams to ``path``."""
    from alignnet.clients.recorder import Recorder
    from alignnet.clients.replay import OnlineScorer, Replayer
    from alignnet.service.live.lsl import Bridge, BridgeConfig

    name = f"xdf-live-{uuid.uuid4().hex[:8]}"
    replayer = Replayer(counts, beh, bin_s, name, speed=2.0)
    bridge = Bridge(BridgeConfig(source_name=name, max_lag_bins=1000, resolve_timeout_s=2.0), lambda: engine).start()
    try:
        assert replayer.wait_for_consumers(10.0)
        scorer = OnlineScorer(name, timeout=10.0)
        recorder = Recorder(path, [name, f"{name}-behavior", f"{name}-decoded"])
        thread = threading.Thread(target=replayer.run, daemon=True)
        thread.start()
        while thread.is_alive():
            scorer.poll()
        scorer.collect(len(counts))
        written = recorder.stop()
        scorer.close()
    finally:
        bridge.stop()
    return name, replayer, scorer, written


def test_labrecorder_style_round_trip_gives_the_live_online_r2(tiny_dataset, service_artifacts, tmp_path):
    from alignnet.cli.main import main
    from alignnet.service.engines import load_engine

    engine = load_engine(service_artifacts[0], "onnx")
    day = Dataset(tiny_dataset / "D").day(0)
    n = 150
    counts, beh = day.counts[:n], day.behavior("pos")[:n]
    name, replayer, scorer, written = _live_run(engine, counts, beh, day.bin_s, tmp_path / "session.xdf")
    live = scorer.score()
    assert live["matched"] == n and written == {name: n, f"{name}-behavior": n, f"{name}-decoded": n}

    # pyxdf reads the file back: stamps exactly as sent, the decoded stream's metadata intact
    streams = {meta(s, "name"): s for s in load_streams(tmp_path / "session.xdf", dejitter=False)}
    np.testing.assert_array_equal(streams[name]["time_stamps"], replayer.stamps)
    decoded = streams[f"{name}-decoded"]
    np.testing.assert_array_equal(decoded["time_stamps"], replayer.stamps)
    np.testing.assert_allclose(decoded["time_series"], scorer.matched()[2], atol=1e-6)
    assert channel_labels(decoded) == list(engine.contract.behavior_names)
    a = desc(decoded)["alignnet"][0]
    assert a["artifact_sha256"] == [engine.config["integrity"]["sha256"]] and a["model"] == [engine.config["model"]]
    assert a["source"][0]["name"] == [name] and a["source"][0]["source_id"] == [f"{name}-spikes"]
    assert float(a["bin_s"][0]) == day.bin_s and a["direction"] == ["decode"]
    assert meta(decoded, "source_id") == f"alignnet-decode-{name}"  # stable: recorders reconnect to it
    assert desc(decoded)["channels"][0]["channel"][0]["unit"] == ["a.u."]

    # `alignnet replay session.xdf` through a service started on the same artifact: the live run's R²
    out = tmp_path / "replay.json"
    assert main(["replay", str(tmp_path / "session.xdf"), "--spike-stream", name, "--behavior-stream",
                 f"{name}-behavior", "--serve", str(service_artifacts[0]), "--score", "--speed", "1",
                 "--name", f"xdf-again-{uuid.uuid4().hex[:6]}", "--json", str(out),
                 "--nwb", str(tmp_path / "scored.nwb")]) == 0
    again = json.loads(out.read_text())
    assert again["matched"] == n and abs(again["r2"] - live["r2"]) <= 1e-6, (again["r2"], live["r2"])

    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(tmp_path / "scored.nwb"), "r") as io:
        nwb = io.read()
        np.testing.assert_allclose(nwb.processing["alignnet"]["decoded"].data[:], decoded["time_series"],
                                   atol=1e-5)
        np.testing.assert_allclose(nwb.acquisition["behavior"].data[:], beh, atol=1e-5)


def test_record_cli_names_what_is_wrong(tmp_path, capsys):
    from alignnet.cli.main import main

    assert main(["record", str(tmp_path / "out.txt"), "--stream", "x"]) == 2
    assert "name it *.xdf" in capsys.readouterr().err
    assert main(["record", str(tmp_path / "out.xdf"), "--stream", f"nope-{uuid.uuid4().hex[:6]}",
                 "--timeout", "0.5"]) == 2
    assert "not found within 0.5 s" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.xdf")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.xdf"), "--held-out"]) == 2
    assert "--held-out applies to dataset days" in capsys.readouterr().err


def test_a_text_behavior_stream_is_named_not_a_traceback(tmp_path):
    """Markers picked as behavior (e.g. --behavior-stream events) are refused with the stream's name, on import and
    on replay, before anything streams."""
    from alignnet.clients.xdf_replay import replay_xdf

    n = 50
    _session(tmp_path / "s.xdf", np.ones((n, 4), np.float32), np.zeros((n, 2)), 5.0 + np.arange(n) * 0.02)
    for run in (lambda: import_xdf(tmp_path / "s.xdf", None, None, behavior="events"),
                lambda: replay_xdf(tmp_path / "s.xdf", behavior="events")):
        with pytest.raises(DataError, match="behavior stream 'events' carries text"):
            run()


def test_a_truncated_file_is_an_error_naming_where_it_ends(tmp_path, rng, capsys):
    """pyxdf reads a file cut at 70 % without a word (2,100 of 3,000 bins, exit 0); here it is refused, by name, with
    where it ends — cut inside a chunk, or at a chunk's end with no stream footers (a recorder that never stopped)."""
    from alignnet.cli.main import main

    n = 3000
    _session(tmp_path / "whole.xdf", rng.poisson(1.0, (n, 8)).astype(np.float32), rng.normal(size=(n, 2)),
             1000.0 + np.arange(1, n + 1) * 0.02)
    data = (tmp_path / "whole.xdf").read_bytes()
    (tmp_path / "cut.xdf").write_bytes(data[:int(0.7 * len(data))])
    assert len(pyxdf.load_xdf(str(tmp_path / "cut.xdf"))[0]) == 3  # the finding: pyxdf takes it as it is
    assert main(["data", "import", str(tmp_path / "cut.xdf"), "--out", str(tmp_path / "D")]) == 2
    err = capsys.readouterr().err
    assert "cut.xdf: the file is truncated" in err and "the file ends" in err and f"of {int(0.7 * len(data)):,} bytes" \
        in err, err
    assert not (tmp_path / "D").exists()

    w = XdfWriter(tmp_path / "unstopped.xdf")  # chunks whole, footers never written
    w.add_stream(1, info_xml("rig", "Spikes", 4, 50.0, "float32", "s"), "float32", 4)
    w.samples(1, np.ones((10, 4), np.float32), np.arange(10) * 0.02)
    w._f.close()
    with pytest.raises(DataError, match=r"unstopped.xdf: the file is truncated: stream\(s\) \[1\] have no footer"):
        import_xdf(tmp_path / "unstopped.xdf", None, None)
    assert import_xdf(tmp_path / "whole.xdf", None, None).n_bins == n  # a whole file still imports


@pytest.mark.parametrize("bin_ms", ["0", "-20", "nan", "abc"])
def test_bin_ms_must_be_a_positive_number(tmp_path, capsys, bin_ms):
    from alignnet.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["data", "import", str(tmp_path / "s.xdf"), "--out", str(tmp_path / "D"), "--bin-ms", bin_ms])
    assert e.value.code == 2
    assert "--bin-ms" in capsys.readouterr().err
