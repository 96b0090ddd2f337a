"""Lab Streaming Layer bridge: spikes in -> decoded behavior out (and behavior in -> simulated spikes out).

One ``Bridge`` per direction runs in its own thread. The path of one sample:

1. ``resolve``: find the source stream by name and/or type, with a timeout (nothing found: wait and try again);
2. ``check_source``: refuse a stream that does not fit the served contract: channel count, and a nominal rate
   equal to the bin rate or an integer multiple of it (re-binned: counts summed, behavior averaged); a decode
   source may also be an irregular stream of spike events (one channel: the channel index of each spike), binned
   on its time stamps;
3. ``open_inlet`` with a bounded buffer and pylsl's clock synchronisation where the source runs on another host
   (on the same host stamps are left exactly as sent); each pull goes into a preallocated array;
4. ``RateWatch``: refuse a regular source whose stamps run off its declared rate (``rate_tolerance``);
   ``Feed.bins``: clean bad samples (NaN, inf, negative, fractional or implausible counts: zeroed and counted as
   dropped) and bin them;
5. ``Route.push`` (``pipeline.py``, chosen once per stream by ``routes.open_route``): an artifact with
   ``decode_stream.npz`` decodes each bin incrementally (the same numbers as the window's newest bin, from cached
   columns), through the process's one batcher with the other sources' bins; otherwise the newest bins' graph or
   the window runs every hop (default one bin) on the stream's ring. ``Lag`` is the one lag policy: more than
   ``max_lag_bins`` bins waiting keep only the newest hop (the rest counted dropped), and a stream with that many
   bins in the batcher waits for them;
6. ``Bridge.emit``: push the last hop's outputs, each stamped with the LSL time of the input bin it came from, so
   downstream measures latency by comparing stamps.

A source that vanishes is resolved again (``/health`` and ``alignnet_lsl_reconnects_total`` show it). liblsl
(pylsl) does discovery, transport and clocks; cleaning and re-binning live in ``sources.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pylsl

from alignnet.model.contract import DataContract
from alignnet.service.live.pipeline import Lag, Ring
from alignnet.service.live.routes import open_route
from alignnet.service.live.sources import (  # noqa: F401
    BridgeMetrics,
    Direction,
    Feed,
    RateWatch,
    SourceLost,
    StallWatch,
    StreamMismatch,
    check_source,
    direction_for,
    open_inlet,
    replay_speed,
    resolve,
)

log = logging.getLogger(__name__)

DIRECTIONS = ("decode", "simulate")

@dataclass
class BridgeConfig:
    direction: str = "decode"  # decode: spikes in, behavior out; simulate: behavior in, spikes out
    source_name: str | None = None  # LSL stream name to resolve (None: any stream of source_type)
    source_type: str | None = None  # LSL stream type (default: "Spikes" for decode, "Behavior" for simulate)
    output_name: str | None = None  # name of the output stream (default: "<source>-decoded" / "-simulated")
    resolve_timeout_s: float = 5.0  # each resolve attempt waits this long
    hop_bins: int = 1  # bins between two engine runs (and samples pushed per run)
    max_lag_bins: int = 10  # when more bins than this wait at once, only the newest hop is decoded
    buffer_s: int = 1  # inlet buffer (seconds; liblsl's default of 360 s lets lag grow)
    event_lateness_s: float = 0.04  # spike-event streams: a bin closes this long after its end
    stall_s: float = 1.0  # a regular source silent this long is "stalled": another of the same name is looked for
    rate_tolerance: float = 0.1  # a regular source whose stamps run this share off its nominal rate is refused
    sample: bool = False  # simulate: push Poisson counts drawn from the rates instead of the rates
    seed: int | None = None  # seed of that sampling
    incremental: bool = True  # decode: each bin from cached columns where the artifact can (else the ring's window)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.hop_bins < 1:
            raise ValueError(f"hop_bins must be >= 1, got {self.hop_bins}")
        if self.max_lag_bins < self.hop_bins:
            raise ValueError(f"max_lag_bins ({self.max_lag_bins}) must be >= hop_bins ({self.hop_bins})")
        if self.resolve_timeout_s <= 0 or self.buffer_s < 1 or self.stall_s <= 0:
            raise ValueError("resolve_timeout_s and stall_s must be > 0 and buffer_s >= 1")
        if self.source_type is None:
            self.source_type = "Spikes" if self.direction == "decode" else "Behavior"


# ---- the bridge --------------------------------------------------------------------------------------------------
class _Calls:
    """A function that returns the engine, as the holder the bridge reads (``holder.engine``)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    @property
    def engine(self) -> Any:
        return self.fn()


class Bridge:
    """Runs one direction in a background thread. ``engine`` holds the engine to use now in its ``engine``
    attribute (the service's ``State``: hot reload swaps it), or is a function that returns it."""

    def __init__(self, cfg: BridgeConfig, engine: Any, metrics: BridgeMetrics | None = None,
                 collector: Any = None, observers: tuple = (), batcher: Any = None, slots: int = 2) -> None:
        self.cfg, self.collector = cfg, collector  # collector: binning.BlockCollector (session calibration)
        # pipeline.Batcher whose window groups other sources' bridges share (None: a lone source's windows decode
        # by themselves; incremental rows always go through the process's batcher); slots: window calls at once
        self.batcher, self.slots = batcher, slots
        self.stream = cfg.source_name or f"type:{cfg.source_type}"  # the metrics' label
        self.observers = [o for o in (collector, *observers) if o is not None]  # + the drift monitor
        self.holder = _Calls(engine) if callable(engine) else engine  # read once per chunk: an attribute, no call
        self.metrics = metrics
        self._children: dict[tuple, Any] = {}  # labelled metric children, by (metric, labels)
        self.state = "starting"
        self.error: str | None = None
        self.source: dict[str, Any] | None = None
        self.rate: RateWatch | None = None  # the source's measured rate (regular streams)
        self.counts = {"samples": 0, "bins": 0, "hops": 0, "pushed": 0, "dropped": 0, "reconnects": 0, "stalls": 0}
        self.last_lag_s: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outlet = None
        self._outlet_key: tuple | None = None
        self._emitted: tuple | None = None  # emit's metric children (hops, lag)
        self._rng = np.random.default_rng(cfg.seed)
        self.route = None  # pipeline.Route of the current stream

    # ---- lifecycle ----
    def start(self) -> Bridge:
        self._thread = threading.Thread(target=self._run, name=f"lsl-{self.cfg.direction}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._outlet = None

    def status(self) -> dict[str, Any]:
        return {"direction": self.cfg.direction, "state": self.state, "error": self.error, "source": self.source,
                "output": self.cfg.output_name, **self.counts, "lag_s": self.last_lag_s,
                "decoding": None if self.route is None else self.route.name,
                "rate": None if self.rate is None else self.rate.status(),
                "calibration_block": self.collector.status() if self.collector is not None else None}

    def _metric(self, name: str, *labels: str):
        """The bridge's child of metric ``name``, made once: prometheus-client's ``labels()`` takes a lock and hashes
        the labels on every call, 11 % of the service's GIL time at 32 sources (py-spy)."""
        if self.metrics is None:
            return None
        key = (name, *labels)
        if (child := self._children.get(key)) is None:
            child = self._children[key] = getattr(self.metrics, name).labels(self.cfg.direction, self.stream, *labels)
        return child

    def _count(self, key: str, n: int = 1, metric: str | None = None, *labels: str) -> None:
        self.counts[key] += int(n)
        m = self._metric(metric, *labels) if metric else None
        if m is not None and n:
            m.inc(n)

    def _drop(self, n: int, reason: str) -> None:
        self._count("dropped", n, "dropped", reason)

    # ---- the loop ----
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                engine = self.holder.engine
                if engine is None:
                    self.state, self.error = "waiting for model", "no model loaded"
                    self._stop.wait(0.5)
                    continue
                self.state = "resolving"
                info, why = resolve(self.cfg)
                if info is None:
                    self.error = why
                    continue
                while info is not None and not self._stop.is_set():  # a stalled source's replacement follows
                    info = self._stream(info, engine)
            except StreamMismatch as e:
                self.state, self.error = "refused", str(e)
                log.error("LSL source refused: %s", e)
                self._stop.wait(self.cfg.resolve_timeout_s)
            except (SourceLost, pylsl.util.LostError):  # a source that ends (a replay's normal end) or dies
                self._count("reconnects", 1, "reconnects")
                self.state, self.error = "resolving", f"source '{self.source['name']}' ended or was lost"
                log.info("LSL source %s ended or was lost; resolving again", self.source["name"])
            except Exception as e:  # keep the bridge alive whatever happens; the error is visible in /health
                self.state, self.error = "error", f"{type(e).__name__}: {e}"
                log.exception("LSL bridge error")
                self._stop.wait(1.0)
        self.state = "stopped"

    def _stream(self, info, engine) -> Any:
        """Stream from one resolved source until it is lost, the model changes or the bridge stops (None), or until
        it stalls and another source of the same name and type appears (that source's info)."""
        c = engine.contract
        d = direction_for(self.cfg, c)
        events, factor, dtype = check_source(info, d, c)
        inlet = open_inlet(info, self.cfg)
        self.source = {"name": info.name(), "type": info.type(), "channels": info.channel_count(),
                       "rate_hz": info.nominal_srate(), "hostname": info.hostname(), "source_id": info.source_id(),
                       "events": events}
        self._ensure_outlet(info.name(), d, c, engine)
        feed = Feed(d, c, events, factor, self.cfg.event_lateness_s, self._drop)
        ring = Ring(d.n_in, c.window_bins, d.fill)
        self._open_route(engine, d, ring, prime=False)
        buf = np.zeros((max(64, int((info.nominal_srate() or 1000) * self.cfg.buffer_s)), info.channel_count()),
                       dtype)  # liblsl writes the stream's own type into it
        self.state, self.error = "streaming", None
        self._set_connected(1)
        watch = StallWatch(self, info, events)
        self.rate = None if events else RateWatch(self, info.nominal_srate(), self.cfg.rate_tolerance,
                                                  speed=replay_speed(inlet, self.cfg.resolve_timeout_s))
        m_samples = self._metric("samples")
        try:
            while not self._stop.is_set():
                if (current := self.holder.engine) is not engine:  # hot reload: check the source against it
                    if current is None or current.contract.to_dict() != c.to_dict():
                        log.info("model changed: re-checking the LSL source")
                        return None
                    engine = current
                    self._open_route(engine, d, ring, prime=True)
                # up to 50 ms for one sample, into the preallocated buffer (a lost source raises LostError: _run)
                x, t = inlet.pull_chunk(timeout=0.05, max_samples=len(buf), dest_obj=buf, min_samples=1,
                                        as_numpy=True)
                n = len(t)
                if (other := watch.after_pull(n)) is not None:
                    return other
                self.counts["samples"] += n
                if m_samples is not None and n:
                    m_samples.inc(n)
                stamps = np.asarray(t, np.float64)
                if self.rate is not None and self.rate.observe(stamps):
                    self._drop(n, "rate")
                    continue
                bins, bin_stamps = feed.bins(x[:n], stamps)
                if len(bins):
                    self.counts["bins"] += len(bins)
                    for observer in self.observers if d.counts else ():  # add(bins, engine, ring): side branches
                        observer.add(bins, engine, ring)
                    self.route.push(bins, bin_stamps)
        finally:
            self._set_connected(0)
            inlet.close_stream()
            self.route.close()
        return None

    def _open_route(self, engine, d: Direction, ring: Ring, prime: bool) -> None:
        """The stream's route, chosen once per model (``routes.open_route``); a model swapped in mid-stream starts
        from the ring. What the previous route had short of a hop, or in flight, is dropped ("reload")."""
        if self.route is not None and (part := self.route.close()):
            self._drop(part, "reload")
        self.route = open_route(engine, d.counts, ring, Lag(self.cfg.max_lag_bins, self.cfg.hop_bins, self._drop),
                                self.emit, incremental=self.cfg.incremental, batcher=self.batcher,
                                shared=self.batcher is not None, slots=self.slots,
                                rng=self._rng if self.cfg.sample else None, prime=prime)

    def emit(self, y: np.ndarray, stamps: list[float]) -> None:
        """Push (k, D) outputs, each with its input bin's stamp; count and time them."""
        k = len(stamps)
        outlet = self._outlet
        if outlet is None:  # the bridge stopped while these were in flight
            self._drop(k, "reload")
            return
        self.counts["hops"] += 1  # counted first: whoever has the outputs sees them counted
        self.counts["pushed"] += k
        if (emitted := self._emitted) is not None:  # the hops and lag metrics' children, fetched with the outlet
            emitted[0].inc()
        for row, t in zip(np.ascontiguousarray(y, np.float32), stamps):
            outlet.push_sample(row, t)
        self.last_lag_s = pylsl.local_clock() - stamps[-1]
        if emitted is not None:
            emitted[1].observe(max(self.last_lag_s, 0.0))

    def _set_connected(self, value: int) -> None:
        m = self._metric("connected")
        if m is not None:
            m.set(value)

    def _ensure_outlet(self, source_name: str, d: Direction, c: DataContract, engine) -> None:
        """Create the output stream once (consumers stay connected across source losses); recreate it only when a
        reloaded model changes the output's shape or rate."""
        key = (d.n_out, c.bin_s)
        if self._outlet is not None and self._outlet_key == key:
            return
        self._outlet_key = key
        self.cfg.output_name = self.cfg.output_name or f"{source_name}-{d.out_suffix}"
        info = outlet_info(self.cfg.output_name, d, c, engine.config, engine.folder.name, self.source or {},
                           self.cfg.hop_bins)
        self._outlet = pylsl.StreamOutlet(info, chunk_size=1, max_buffered=max(1, int(self.cfg.buffer_s)))
        self._emitted = None if self.metrics is None else (self._metric("hops"), self._metric("lag"))


@dataclass
class Bridges:
    """The bridges the app runs (zero, one or both directions)."""

    items: list[Bridge] = field(default_factory=list)
    batcher: Any = None

    def status(self) -> dict[str, Any]:
        if not self.items:
            return {"state": "disabled"}
        states = [b.state for b in self.items]
        overall = "streaming" if all(s == "streaming" for s in states) else \
            next(s for s in states if s != "streaming")
        out = {"state": overall, "bridges": [b.status() for b in self.items]}
        groups = {id(g): g for b in self.items if (g := getattr(b.route, "group", None)) is not None}
        if groups:  # windows of several sources decoded together (routes.WindowGroup)
            st = [g.stats for g in groups.values()]
            out["batching"] = {"calls": sum(x["calls"] for x in st), "windows": sum(x["items"] for x in st),
                               "largest_batch": max(x["largest_batch"] for x in st),
                               "engine_s": sum(x["run_s"] for x in st)}
        rows = {id(s.rows): s.rows for b in self.items if (s := getattr(b.route, "stream", None)) is not None}
        if rows:  # incremental decoding: bins stepped together (pipeline.RowGroup)
            out["incremental"] = [dict(r.stats) for r in rows.values()]
        return out

    def stop(self) -> None:
        for b in self.items:
            b.stop()


def outlet_info(name: str, d: Direction, c: DataContract, config: dict, artifact: str, source: dict,
                hop_bins: int):
    """The output stream's info, described by the XDF meta-data conventions (``desc/channels/channel`` with label,
    unit and type; ``desc/acquisition``) plus an ``alignnet`` group: the model, the artifact's config hash, bin
    width, window, hop, and the input stream it was computed from; so a LabRecorder file says what each stream was.
    The ``source_id`` depends only on the direction and the input stream's name: a restarted service (or a reloaded
    model) keeps it, and recorders reconnect to it."""
    from alignnet import __version__

    info = pylsl.StreamInfo(name, d.out_type, d.n_out, 1.0 / c.bin_s, "float32", f"alignnet-{d.name}-"
                            f"{source.get('name', 'source')}")
    desc = info.desc()
    desc.append_child_value("producer", "alignnet-bci")
    desc.append_child_value("stamps", "LSL time of the input bin each sample was computed from")
    desc.append_child_value("units", d.out_units)
    chans = desc.append_child("channels")
    if d.counts:  # decoded behavior
        kind = {"pos": "Position", "vel": "Velocity"}.get(c.behavior_kind, c.behavior_kind)
        unit = str(c.extra.get("behavior_unit", "a.u."))
        types = [f"{kind}{n.upper()}" if len(n) == 1 else kind for n in d.out_labels]
    else:
        unit, types = "counts per bin", ["SpikeCount"] * d.n_out
    for label, type_ in zip(d.out_labels, types):
        ch = chans.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", unit)
        ch.append_child_value("type", type_)
    acq = desc.append_child("acquisition")
    acq.append_child_value("manufacturer", "AlignNet-BCI")
    acq.append_child_value("model", str(config.get("model", "?")))
    acq.append_child_value("software_version", __version__)
    a = desc.append_child("alignnet")
    for key, value in (("direction", d.name), ("model", config.get("model", "?")), ("artifact", artifact),
                       ("artifact_sha256", (config.get("integrity") or {}).get("sha256", "")),
                       ("causal", _causal(config)),
                       ("bin_s", repr(c.bin_s)), ("window_bins", str(c.window_bins)), ("hop_bins", str(hop_bins)),
                       ("behavior_kind", c.behavior_kind)):
        a.append_child_value(key, str(value))
    src = a.append_child("source")
    for key in ("name", "type", "source_id", "hostname"):
        src.append_child_value(key, str(source.get(key, "")))
    return info


def _causal(config: dict) -> str:
    """Whether the served decoder sees only the past (recorded at export; ``unstated`` for older artifacts)."""
    flag = config.get("causal_decode", (config.get("model_config") or {}).get("causal"))
    return "unstated" if flag is None else str(bool(flag)).lower()
