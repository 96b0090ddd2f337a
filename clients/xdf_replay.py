"""Replay a recorded session (an XDF file, e.g. from LabRecorder or ``alignnet record``) over LSL with its original
timing, and score the service's decoded stream against the recorded behavior.

``alignnet replay session.xdf --serve ARTIFACT --score``: the spike stream (by name or type, default type 'Spikes')
is pushed again as NAME, shaped as recorded (channels, rate, format; spike-event streams stay events), and the
behavior stream as NAME-behavior, each sample at its recorded time relative to the first (``--speed`` scales it).
The service decodes NAME as it would the live source, so a recorded session gives the live run's decoded values.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from alignnet.recordings.xdf import channel_labels, desc, load_streams, meta, numbers, pick


def recorded_speed(stream: dict) -> float:
    """How many times faster than its bins' time a recorded stream was sent (``desc/replay_speed``, written by
    ``alignnet replay --speed``); 1 where absent or not a positive number."""
    try:
        value = float((desc(stream).get("replay_speed") or ["1"])[0] or 1)
    except (TypeError, ValueError):
        return 1.0
    return value if np.isfinite(value) and value > 0 else 1.0


class XdfPlayer:
    """Pushes recorded streams again, each sample at its recorded time relative to the session's first sample."""

    def __init__(self, streams: list[dict], names: list[str], types: list[str], speed: float = 1.0) -> None:
        import pylsl

        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.pylsl, self.speed, self.streams = pylsl, speed, streams
        self.outlets = []
        for s, name, type_ in zip(streams, names, types):
            x = np.asarray(s["time_series"])
            fmt = meta(s, "channel_format", "float32")
            info = pylsl.StreamInfo(name, type_, x.shape[1], float(meta(s, "nominal_srate", "0")), fmt,
                                    f"{name}-xdf-replay")
            info.desc().append_child_value("producer", "alignnet replay (XDF)")
            info.desc().append_child_value("recorded_name", meta(s, "name"))
            # the service checks stamps against the nominal rate times the declared speed: a recording of a replay
            # sped up (its own desc/replay_speed) keeps that speed-up, times this replay's
            info.desc().append_child_value("replay_speed", f"{recorded_speed(s) * speed:g}")
            if labels := channel_labels(s):
                info.set_channel_labels(labels)
            self.outlets.append(pylsl.StreamOutlet(info, chunk_size=1))
        self.first = min(float(s["time_stamps"][0]) for s in streams)
        self.stamps: list[np.ndarray] = [np.zeros(0)] * len(streams)
        self.sent = [0] * len(streams)

    def wait_for_consumers(self, timeout: float = 30.0) -> bool:
        return self.outlets[0].wait_for_consumers(timeout)

    def run(self, stop: threading.Event | None = None, progress: bool = False) -> None:
        from tqdm.auto import tqdm

        t0 = self.pylsl.local_clock() + 0.05
        self.stamps = [t0 + (np.asarray(s["time_stamps"], np.float64) - self.first) / self.speed
                       for s in self.streams]
        data = [np.asarray(s["time_series"]) for s in self.streams]
        end = max(float(st[-1]) for st in self.stamps)
        bar = tqdm(total=round(end - t0, 1), desc="replaying", unit="s", disable=not progress)
        while not (stop is not None and stop.is_set()):
            now = self.pylsl.local_clock()
            for k, (outlet, st, x) in enumerate(zip(self.outlets, self.stamps, data)):
                due = int(np.searchsorted(st, now, side="right"))  # a sample is sent once its time has come
                if due > self.sent[k]:
                    outlet.push_chunk(x[self.sent[k]:due].tolist() if x.dtype.kind in "OUS" else
                                      np.ascontiguousarray(x[self.sent[k]:due]), st[self.sent[k]:due].tolist())
                    self.sent[k] = due
            bar.update(round(min(now, end) - t0, 1) - bar.n)
            if all(s == len(st) for s, st in zip(self.sent, self.stamps)):
                break
            nxt = min((float(st[s]) for s, st in zip(self.sent, self.stamps) if s < len(st)), default=now)
            time.sleep(min(0.05, max(0.0, nxt - self.pylsl.local_clock())))
        bar.close()


def replay_xdf(path: Path, *, spikes: str | None = None, behavior: str | None = None, name: str = "alignnet-replay",
               speed: float = 1.0, score: bool = False, artifact: Path | None = None, hop: int | None = None,
               nwb: Path | None = None, announce=print) -> dict:
    """Replay an XDF session's spike and behavior streams; with ``score`` (or ``artifact``: the service started here
    on it) score the decoded stream online; with ``nwb`` write the decoded and recorded streams to an NWB file."""
    from alignnet.clients.replay import OnlineScorer, write_scored_nwb
    from alignnet.service.engines import check_artifact
    from alignnet.service.http.launcher import serving

    path = Path(path)
    streams = load_streams(path, dejitter=False)  # the recorded timing, clocks synchronised
    s_spk = pick(streams, "spike", spikes, "Spikes", path)
    s_beh = pick(streams, "behavior", behavior, "Behavior", path)
    numbers(s_beh, "behavior", path)  # scored against: text (markers) is refused here, not mid-replay
    rate = float(meta(s_spk, "nominal_srate", "0"))
    config = check_artifact(artifact, "onnx") if artifact else None
    if config:
        n_in, events = int(meta(s_spk, "channel_count")), rate <= 0
        if not events and config["contract"].get("units_matched", True) and n_in != config["contract"]["n_channels"]:
            raise ValueError(f"{path}: spike stream '{meta(s_spk, 'name')}' has {n_in} channels; the served model "
                             f"reads {config['contract']['n_channels']}")
    player = XdfPlayer([s_spk, s_beh], [name, f"{name}-behavior"], ["Spikes", "Behavior"], speed=speed)
    extra = ["--lsl", "--lsl-source", name] + (["--hop", str(hop)] if hop else [])
    span = float(s_spk["time_stamps"][-1] - s_spk["time_stamps"][0])
    result = {"file": path.name, "spike_stream": meta(s_spk, "name"), "behavior_stream": meta(s_beh, "name"),
              "seconds": round(span, 3)}
    with serving(artifact, extra) if artifact else nullcontext() as _url, \
            OnlineScorer(name) if score or artifact else nullcontext() as scorer:
        announce(f"replaying {path.name}: '{result['spike_stream']}' ({len(s_spk['time_stamps'])} samples) and "
                 f"'{result['behavior_stream']}' over {span:.1f} s at {speed:g}x on LSL stream '{name}' "
                 f"(+ '{name}-behavior')")
        if scorer is None:
            player.run(progress=True)
            return {**result, "samples": player.sent[0]}
        thread = threading.Thread(target=player.run, kwargs={"progress": True}, daemon=True)
        thread.start()
        while thread.is_alive():
            scorer.poll()
        # one decoded sample per spike sample where the stream runs at the bin rate: wait for all of them
        expected = player.sent[0] if config and abs(rate * config["contract"]["bin_s"] - 1) < 1e-6 else 0
        scorer.collect(expected - expected % (hop or 1), timeout=5.0 if expected else 1.0)
        result.update({"samples": player.sent[0], **scorer.score()})
        if nwb is not None:
            write_scored_nwb(nwb, scorer, config, source=str(path))
            result["nwb"] = str(nwb)
    return result
