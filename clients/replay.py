"""Replay a recorded day over LSL at real speed, and score the service's decoded stream online.

``alignnet replay DATA --day K`` streams the day's spike counts per bin on ``NAME`` (type Spikes) and its behavior
on ``NAME-behavior`` (type Behavior), both stamped with the same LSL time per bin. With ``--score``, a scorer
collects the service's ``NAME-decoded`` stream, matches each decoded sample to the behavior sample with the same
stamp, and reports the online R²; with ``--serve`` the command starts the service itself. ``--offline-check`` also
decodes the same windows offline with the same artifact and reports the difference (it should be ~1e-7: online and
offline run the same engine on the same windows).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from alignnet.model.metrics import r2
from alignnet.model.streaming import offline_twin
from alignnet.service.http.launcher import ServiceUnavailable

log = logging.getLogger(__name__)


class Replayer:
    """Pushes bins (counts and behavior) in real time (or ``speed`` times faster), one LSL stamp per bin."""

    def __init__(self, counts: np.ndarray, behavior: np.ndarray, bin_s: float, name: str = "alignnet-replay",
                 names: list[str] | None = None, speed: float = 1.0, chunk_bins: int = 1) -> None:
        import pylsl

        if counts.ndim != 2 or behavior.ndim != 2 or len(counts) != len(behavior):
            raise ValueError(f"counts (n, C) and behavior (n, D) must have the same n; got {counts.shape} and "
                             f"{behavior.shape}")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.pylsl = pylsl
        self.counts, self.behavior = counts.astype(np.float32), behavior.astype(np.float32)
        self.bin_s, self.speed, self.chunk = bin_s, speed, max(1, int(chunk_bins))
        self.name = name
        rate = 1.0 / bin_s
        spikes = pylsl.StreamInfo(name, "Spikes", counts.shape[1], rate, "float32", f"{name}-spikes")
        spikes.desc().append_child_value("producer", "alignnet replay")
        # bins of bin_s sent speed times faster: the service checks the stamps' rate against rate * speed
        spikes.desc().append_child_value("replay_speed", f"{speed:g}")
        beh = pylsl.StreamInfo(f"{name}-behavior", "Behavior", behavior.shape[1], rate, "float32", f"{name}-beh")
        if names:
            beh.set_channel_labels(list(names))
        self.spike_outlet = pylsl.StreamOutlet(spikes, chunk_size=self.chunk)
        self.behavior_outlet = pylsl.StreamOutlet(beh, chunk_size=self.chunk)
        self.stamps = np.zeros(0)
        self.sent = 0

    def wait_for_consumers(self, timeout: float = 30.0) -> bool:
        return self.spike_outlet.wait_for_consumers(timeout)

    def run(self, stop: threading.Event | None = None, progress: bool = False) -> np.ndarray:
        """Stream every bin; returns the stamps used."""
        from tqdm.auto import tqdm

        n = len(self.counts)
        step = self.bin_s / self.speed
        t0 = self.pylsl.local_clock() + 0.05
        self.stamps = t0 + np.arange(n) * step
        start = time.monotonic() + 0.05
        for i in tqdm(range(0, n, self.chunk), desc="replaying", unit="chunk", disable=not progress):
            if stop is not None and stop.is_set():
                break
            j = min(n, i + self.chunk)
            time.sleep(max(0.0, start + (j - 1) * step - time.monotonic()))  # a bin is sent once it has ended
            stamps = self.stamps[i:j].tolist()
            self.spike_outlet.push_chunk(self.counts[i:j], stamps)
            self.behavior_outlet.push_chunk(self.behavior[i:j], stamps)
            self.sent = j
        return self.stamps[:self.sent]


class OnlineScorer:
    """Collects the decoded and the behavior streams and scores decoded against behavior, matched on stamps."""

    def __init__(self, name: str, timeout: float = 30.0) -> None:
        import pylsl

        self.pylsl = pylsl
        self.inlets = {}
        for key, stream in (("decoded", f"{name}-decoded"), ("behavior", f"{name}-behavior")):
            found = pylsl.resolve_byprop("name", stream, 1, timeout)
            if not found:
                raise ServiceUnavailable(f"LSL stream {stream!r} not found within {timeout:g} s" + (
                    f": is the service bridging '{name}' (alignnet serve --lsl --lsl-source {name})?"
                    if key == "decoded" else ""))
            inlet = pylsl.StreamInlet(found[0], max_buflen=360, processing_flags=pylsl.proc_none)
            inlet.open_stream(timeout=10.0)
            self.inlets[key] = inlet
        self.data: dict[str, dict[float, np.ndarray]] = {"decoded": {}, "behavior": {}}
        self.latency: list[float] = []

    def close(self) -> None:
        """Close the inlets before the service they read from stops (an inlet left open reports the outlet's end as
        an error and tries to reconnect)."""
        for inlet in self.inlets.values():
            inlet.close_stream()
        self.inlets = {}

    def __enter__(self) -> OnlineScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def poll(self, timeout: float = 0.05) -> int:
        got = 0
        for key, inlet in self.inlets.items():
            x, ts = inlet.pull_chunk(timeout=timeout if key == "decoded" else 0.0, max_samples=4096, min_samples=1)
            now = self.pylsl.local_clock()
            for row, t in zip(x, ts):
                self.data[key][t] = np.asarray(row, np.float64)
                if key == "decoded":
                    self.latency.append(now - t)
            got += len(ts)
        return got

    def collect(self, expected: int, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while len(self.data["decoded"]) < expected and time.monotonic() < end:
            self.poll()
        self.poll(0.2)

    def matched(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(stamps, behavior (n, D), decoded (n, D)) for the stamps seen on both streams, in time order. Where the
        behavior was not sampled on the spike bins' stamps (a recorded session with its own behavior clock), the
        behavior is interpolated linearly at each decoded stamp inside its span instead."""
        dec, beh = self.data["decoded"], self.data["behavior"]
        stamps = np.array(sorted(set(dec) & set(beh)))
        if stamps.size * 2 < len(dec) and len(beh) > 1:
            bt = np.array(sorted(beh))
            stamps = np.array([t for t in sorted(dec) if bt[0] <= t <= bt[-1]])
            if stamps.size:
                bx = np.stack([beh[t] for t in bt])
                y = np.stack([np.interp(stamps, bt, bx[:, j]) for j in range(bx.shape[1])], axis=1)
                return stamps, y, np.stack([dec[t] for t in stamps])
        if stamps.size == 0:
            return stamps, np.zeros((0, 0)), np.zeros((0, 0))
        return (stamps, np.stack([beh[t] for t in stamps]), np.stack([dec[t] for t in stamps]))

    def score(self) -> dict:
        stamps, y, yhat = self.matched()
        lat = np.asarray(self.latency) * 1e3
        out = {"decoded": len(self.data["decoded"]), "behavior": len(self.data["behavior"]), "matched": len(stamps),
               "r2": r2(y, yhat) if len(stamps) > 1 else None}
        if lat.size:
            out["latency_ms"] = {"p50": round(float(np.percentile(lat, 50)), 2),
                                 "p99": round(float(np.percentile(lat, 99)), 2)}
        return out


def write_scored_nwb(path: Path, scorer: OnlineScorer, config: dict | None, source: str) -> Path:
    """The decoded stream and the behavior it was scored against, matched on stamps, as an NWB file (TimeSeries
    'behavior' in acquisition, 'decoded' in the 'alignnet' processing module) for the tools labs already use."""
    from datetime import datetime, timezone

    from pynwb import NWBFile, TimeSeries

    from alignnet.recordings.importers import write_nwb

    stamps, y, yhat = scorer.matched()
    if not len(stamps):
        raise ValueError("nothing was decoded and matched to behavior; no NWB file written")
    t0 = float(stamps[0])
    model = (config or {}).get("model", "the served model")
    nwb = NWBFile(session_description=f"online decode of {source} by {model}", identifier=f"alignnet-{t0:.6f}",
                  session_start_time=datetime.now(timezone.utc), source_script="alignnet replay --score --nwb",
                  source_script_file_name="alignnet")
    nwb.add_acquisition(TimeSeries(name="behavior", data=y, timestamps=stamps - t0, unit="a.u.",
                                   description=f"recorded behavior of {source}, at the decoded samples' stamps"))
    mod = nwb.create_processing_module("alignnet", f"decoded online by {model}")
    sha = ((config or {}).get("integrity") or {}).get("sha256", "")
    mod.add(TimeSeries(name="decoded", data=yhat, timestamps=stamps - t0, unit="a.u.",
                       description=f"decoded behavior; model {model}, artifact config sha256 {sha}; stamps are "
                       f"seconds after LSL time {t0:.6f} (the input bin's stamp)"))
    return write_nwb(nwb, path)


def engine_twin(engine, counts: np.ndarray, hop: int, batch: int = 256) -> np.ndarray:
    """What the bridge computes from ``counts`` with this engine, offline (``alignnet.model.streaming``)."""
    return offline_twin(engine.decode, counts, engine.contract.window_bins, hop, batch)


# ---- a scored replay ----------------------------------------------------------------------------------------------
def _check_against(config: dict, counts: np.ndarray, bin_s: float, what: str) -> None:
    """The served model must read this recording: same channel count and bin width."""
    c = config["contract"]
    if c.get("units_matched", True) and counts.shape[1] != c["n_channels"]:
        raise ValueError(f"{what} has {counts.shape[1]} channels; the served model reads {c['n_channels']}")
    if abs(c["bin_s"] - bin_s) > 1e-9:
        raise ValueError(f"{what} is binned at {bin_s * 1e3:g} ms; the served model at {c['bin_s'] * 1e3:g} ms")


def replay_day(day, *, name: str = "alignnet-replay", kind: str | None = None, speed: float = 1.0,
               start_s: float = 0.0, seconds: float | None = None, score: bool = False,
               artifact: Path | None = None, hop: int | None = None, offline_check: bool = False,
               calibrate_seconds: float = 0.0, nwb: Path | None = None, announce=print) -> dict:
    """Stream a day (a ``Day``) over LSL in real time; with ``score`` (or ``artifact``: the service started here on
    it) score the decoded stream online; with ``offline_check`` also decode the same windows offline. With
    ``calibrate_seconds`` (and ``artifact``) the service calibrates the session without labels on its first seconds
    and swaps the result in; the bins decoded after the swap are scored apart, online and offline with the
    calibrated artifact."""
    from contextlib import nullcontext

    from alignnet.service.engines import check_artifact
    from alignnet.service.http.launcher import serving

    config = check_artifact(artifact, "onnx") if artifact else None
    kind = kind or (config["contract"]["behavior_kind"] if config else "pos")
    first = int(round(start_s / day.bin_s))
    last = day.n_bins if seconds is None else min(day.n_bins, first + int(round(seconds / day.bin_s)))
    if last - first < 2:
        raise ValueError(f"day {day.name} has {day.n_bins} bins; nothing to replay from {start_s:g} s")
    counts, beh = day.counts[first:last], day.behavior(kind)[first:last]
    if config:
        _check_against(config, counts, day.bin_s, f"day {day.name}")
    replayer = Replayer(counts, beh, day.bin_s, name, speed=speed)
    extra = ["--lsl", "--lsl-source", name] + (["--hop", str(hop)] if hop else [])
    if calibrate_seconds > 0:
        if artifact is None:
            raise ValueError("--calibrate-seconds needs --serve (the service started here calibrates)")
        import tempfile

        extra += ["--calibrate-seconds", str(calibrate_seconds), "--calibration-dir", tempfile.mkdtemp("-alignnet")]
    result = {"day": day.name, "behavior_kind": kind}  # ("behavior" is the scorer's count of behavior samples)
    with serving(artifact, extra) if artifact else nullcontext() as url, \
            OnlineScorer(name) if score or artifact else nullcontext() as scorer:  # closed before the service
        announce(f"replaying {day.name}: {last - first} bins of {day.bin_s * 1e3:g} ms "
                 f"({(last - first) * day.bin_s:.1f} s at {speed:g}x) on LSL stream '{name}' (+ '{name}-behavior', "
                 f"{kind})")
        if scorer is None:
            replayer.run(progress=True)
            return {**result, "bins": replayer.sent}
        if artifact is not None:
            result["served"] = served_check(url, config)
        thread = threading.Thread(target=replayer.run, kwargs={"progress": True}, daemon=True)
        thread.start()
        watch = SwapWatch(url) if calibrate_seconds > 0 else None
        while thread.is_alive():
            scorer.poll()
            if watch is not None:
                watch.poll()
        hop = hop or 1
        scorer.collect(replayer.sent - replayer.sent % hop)
        result.update({"bins": replayer.sent, **scorer.score()})
        if offline_check and artifact is not None:
            result.update(offline_comparison(artifact, scorer, replayer, counts, beh, hop))
        if watch is not None:
            result["calibration"] = watch.compare(scorer, replayer, counts, beh, hop)
        if nwb is not None:
            result["nwb"] = str(write_scored_nwb(nwb, scorer, config, source=f"day {day.name}"))
    return result


def served_check(url: str, config: dict) -> dict:
    """What the started service serves, against the artifact it was started on: a service may serve another one (a
    resumed calibration), and the offline check compares with the one given."""
    import httpx

    m = httpx.get(url + "/model", timeout=5.0).json()
    same = m.get("config_sha256") == (config.get("integrity") or {}).get("sha256")
    out = {"artifact": m.get("artifact"), "config_sha256": m.get("config_sha256"), "as_given": same}
    if not same:
        log.warning("the service serves %s, not the artifact it was started on; online and offline will differ",
                    m.get("artifact"))
    return out


class SwapWatch:
    """Watches a service's live calibration (``/health``) and notes the LSL time by which it had swapped in."""

    def __init__(self, url: str) -> None:
        import pylsl

        self.url, self.clock, self.next = url, pylsl.local_clock, 0.0
        self.status: dict = {}
        self.swapped_at: float | None = None

    def poll(self) -> None:
        import httpx

        if self.swapped_at is not None or time.monotonic() < self.next:
            return
        self.next = time.monotonic() + 0.25
        try:
            self.status = httpx.get(self.url + "/health", timeout=2.0).json().get("calibration", {})
        except (httpx.HTTPError, ValueError):
            return
        if self.status.get("state") == "done":
            self.swapped_at = self.clock() + 0.5  # the bridges pick the new engine up at their next hop

    def compare(self, scorer: OnlineScorer, replayer: Replayer, counts: np.ndarray, beh: np.ndarray,
                hop: int) -> dict:
        """Online R² of the bins decoded after the swap, and the calibrated artifact's offline R² on them."""
        if self.swapped_at is None:
            return {"state": self.status.get("state", "not started"), "error": self.status.get("error")}
        stamps, y, yhat = scorer.matched()
        after = stamps > self.swapped_at
        out = {"state": "done", "artifact": self.status.get("artifact"), "bins_after_swap": int(after.sum()),
               "online_r2_after_swap": r2(y[after], yhat[after]) if after.sum() > 1 else None,
               "online_r2_before_swap": r2(y[~after], yhat[~after]) if (~after).sum() > 1 else None}
        if after.sum() > 1:
            from alignnet.service.engines import load_engine

            twin = engine_twin(load_engine(self.status["artifact"], "onnx"), counts[:replayer.sent], hop)
            index = np.searchsorted(replayer.stamps, stamps[after])
            out["offline_r2_after_swap"] = r2(beh[index], twin[index])
            out["max_abs_diff_online_offline"] = float(np.abs(twin[index] - yhat[after]).max())
        return out


def offline_comparison(artifact: Path, scorer: OnlineScorer, replayer: Replayer, counts: np.ndarray,
                       beh: np.ndarray, hop: int) -> dict:
    """The offline R² of the artifact on the bins scored online, and the largest online/offline difference."""
    from alignnet.service.engines import load_engine

    engine = load_engine(artifact, "onnx")
    stamps, _, yhat = scorer.matched()
    index = np.searchsorted(replayer.stamps, stamps)
    twin = engine_twin(engine, counts[:replayer.sent], hop)
    ok = index < len(twin)
    return {"offline_r2_same_bins": r2(beh[index[ok]], twin[index[ok]]),
            "max_abs_diff_online_offline": float(np.abs(twin[index[ok]] - yhat[ok]).max())}
