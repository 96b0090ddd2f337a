"""Lab Streaming Layer bridge: spikes in -> decoded behavior out (and behavior in -> simulated spikes out).

One ``Bridge`` per direction runs in its own thread. The path of one sample:

1. ``resolve``: find the source stream by name and/or type, with a timeout (nothing found: wait and try again);
2. ``check_source``: refuse a stream that does not fit the served contract: channel count, and a nominal rate
   equal to the bin rate or an integer multiple of it (re-binned: counts summed, behavior averaged); a decode
   source may also be an irregular stream of spike events (one channel: the channel index of each spike), binned
   on its time stamps;
3. ``open_inlet`` with a bounded buffer and pylsl's clock synchronisation where the source runs on another host
   (on the same host stamps are left exactly as sent); ``read_chunk`` pulls into a preallocated array;
4. ``Feed.bins``: clean bad samples (NaN, inf, negative counts: zeroed and counted as dropped) and bin them;
5. ``Bridge._advance``: push bins into the ring buffer of one window and run the engine every hop (default one
   bin); when more than ``max_lag_bins`` bins wait at once only the newest hop is decoded (the skipped bins still
   fill the ring and are counted as dropped), so lag cannot grow;
6. ``Bridge._hop``: push the last hop's outputs, each stamped with the LSL time of the input bin it came from, so
   downstream measures latency by comparing stamps.

A source that vanishes is resolved again (``/health`` and ``alignnet_lsl_reconnects_total`` show it). liblsl
(pylsl) does discovery, transport and clocks; binning lives in ``alignnet.service.binning``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pylsl

from alignnet.model.contract import DataContract
from alignnet.service.binning import EventBinner, RegularBinner, Ring, sanitize

log = logging.getLogger(__name__)

DIRECTIONS = ("decode", "simulate")

# LSL channel formats the bridge reads, and the numpy type liblsl writes for each
LSL_DTYPES = {pylsl.cf_float32: np.float32, pylsl.cf_double64: np.float64, pylsl.cf_int8: np.int8,
              pylsl.cf_int16: np.int16, pylsl.cf_int32: np.int32, pylsl.cf_int64: np.int64}


class StreamMismatch(ValueError):
    """A source stream that does not fit the served contract."""


class SourceLost(RuntimeError):
    """The source stream went away (liblsl reported the loss)."""


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
    sample: bool = False  # simulate: push Poisson counts drawn from the rates instead of the rates
    seed: int | None = None  # seed of that sampling

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.hop_bins < 1:
            raise ValueError(f"hop_bins must be >= 1, got {self.hop_bins}")
        if self.max_lag_bins < self.hop_bins:
            raise ValueError(f"max_lag_bins ({self.max_lag_bins}) must be >= hop_bins ({self.hop_bins})")
        if self.resolve_timeout_s <= 0 or self.buffer_s < 1:
            raise ValueError("resolve_timeout_s must be > 0 and buffer_s >= 1")
        if self.source_type is None:
            self.source_type = "Spikes" if self.direction == "decode" else "Behavior"


@dataclass(frozen=True)
class Direction:
    """Everything that differs between decode and simulate, decided once per stream."""

    name: str  # decode | simulate
    n_in: int  # input channels the contract expects
    n_out: int  # output channels
    counts: bool  # the input is spike counts (bad values -> 0, re-binning sums) rather than behavior (held, mean)
    fill: np.ndarray  # the ring buffer's value at rest (no spikes; behavior at its mean)
    out_type: str  # LSL type of the output stream
    out_suffix: str  # output stream name: "<source>-<suffix>"
    out_labels: list[str]
    out_units: str


def direction_for(cfg: BridgeConfig, c: DataContract) -> Direction:
    if cfg.direction == "decode":
        return Direction("decode", c.n_channels, c.behavior_dims, True, np.zeros(c.n_channels, np.float32),
                         "DecodedBehavior", "decoded", list(c.behavior_names), c.behavior_kind)
    return Direction("simulate", c.behavior_dims, c.n_channels, False, np.asarray(c.behavior_mean, np.float32),
                     "SimulatedSpikes", "simulated", [f"ch{i}" for i in range(c.n_channels)],
                     "spike counts per bin" if cfg.sample else "expected spike counts per bin")


# ---- the steps of one sample's path ------------------------------------------------------------------------------
def resolve(cfg: BridgeConfig) -> tuple[Any | None, str]:
    """The first stream matching the config's name and/or type within the timeout, or (None, why)."""
    parts = [f"name='{cfg.source_name}'" if cfg.source_name else "",
             f"type='{cfg.source_type}'" if cfg.source_type else ""]
    pred = " and ".join(p for p in parts if p)
    found = pylsl.resolve_bypred(pred, 1, cfg.resolve_timeout_s)
    if not found:
        return None, f"no LSL stream with {pred} found within {cfg.resolve_timeout_s:g} s; still looking"
    return found[0], ""


def check_source(info, d: Direction, c: DataContract) -> tuple[bool, int, type]:
    """(spike events?, samples per bin, numpy dtype) of a source that fits the contract; StreamMismatch otherwise."""
    rate, n_in, name = info.nominal_srate(), info.channel_count(), info.name()
    events = d.counts and rate == pylsl.IRREGULAR_RATE
    factor = 1
    if events and n_in != 1:
        raise StreamMismatch(f"stream '{name}' is irregular (spike events) with {n_in} channels; an event stream "
                             "carries one channel: the channel index of each spike")
    if not events:
        if n_in != d.n_in:
            raise StreamMismatch(f"stream '{name}' has {n_in} channels; the model expects {d.n_in} "
                                 f"({'spike channels' if d.counts else 'behavior dims'})")
        ratio = rate * c.bin_s
        if rate <= 0 or ratio < 1 - 1e-6 or abs(ratio - round(ratio)) > 1e-6:
            raise StreamMismatch(f"stream '{name}' runs at {rate:g} Hz; the model needs {1 / c.bin_s:g} Hz or an "
                                 "integer multiple of it (re-binned)")
        factor = int(round(ratio))
    dtype = LSL_DTYPES.get(info.channel_format())
    if dtype is None:
        raise StreamMismatch(f"stream '{name}' carries {info.channel_format()!r}-typed values; the bridge reads "
                             "numbers (float32, double64, int8/16/32/64)")
    return events, factor, dtype


def open_inlet(info, cfg: BridgeConfig):
    """A bounded inlet. Another host's stamps are mapped to this clock by liblsl (``proc_clocksync``); on the same
    host they stay exactly as sent, so consumers can match outputs to inputs by stamp."""
    same_host = info.hostname() == socket.gethostname()
    flags = pylsl.proc_none if same_host else pylsl.proc_clocksync
    inlet = pylsl.StreamInlet(info, max_buflen=cfg.buffer_s, recover=False, processing_flags=flags)
    inlet.open_stream(timeout=cfg.resolve_timeout_s)
    return inlet


def read_chunk(inlet, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pull what is there (waiting up to 50 ms for one sample) into ``buf``; (samples, stamps), or SourceLost."""
    try:
        x, stamps = inlet.pull_chunk(timeout=0.05, max_samples=len(buf), dest_obj=buf, min_samples=1, as_numpy=True)
    except pylsl.util.LostError as e:
        raise SourceLost(str(e)) from None
    n = len(stamps)
    return x[:n], np.asarray(stamps, np.float64)


class Feed:
    """Samples of one source -> clean bins with their stamps: regular streams re-binned by ``factor``, spike events
    binned on their stamps. ``drop(n, reason)`` is told about every bad sample."""

    def __init__(self, d: Direction, c: DataContract, events: bool, factor: int, lateness_s: float,
                 drop: Callable[[int, str], None]) -> None:
        self.d, self.events, self.drop = d, events, drop
        self.binner = EventBinner(c.bin_s, c.n_channels, lateness_s) if events else \
            RegularBinner(factor, d.n_in, "sum" if d.counts else "mean")
        self.last_good: np.ndarray | None = None

    def bins(self, x: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.events:
            bins, out_stamps, bad = self.binner.feed(x[:, 0] if len(x) else np.zeros(0), stamps, pylsl.local_clock())
            if bad:
                self.drop(bad, "bad event")
            return bins, out_stamps
        if not len(x):
            return np.zeros((0, self.d.n_in), np.float32), stamps
        clean, bad = sanitize(x.astype(np.float32), counts=self.d.counts, last=self.last_good)
        if bad:
            self.drop(bad, "bad value")
        self.last_good = clean[-1]
        return self.binner.feed(clean, stamps)


# ---- the bridge --------------------------------------------------------------------------------------------------
class BridgeMetrics:
    """Prometheus metrics of the bridges, registered on the app's registry."""

    def __init__(self, registry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def labelled(kind, name: str, doc: str, *labels: str, **kw):
            return kind(name, doc, ["direction", *labels], registry=registry, **kw)

        self.samples = labelled(Counter, "alignnet_lsl_samples_total", "LSL input samples received")
        self.dropped = labelled(Counter, "alignnet_lsl_samples_dropped_total", "LSL input samples dropped or zeroed",
                                "reason")
        self.hops = labelled(Counter, "alignnet_lsl_hops_total", "engine runs of the LSL bridge")
        self.reconnects = labelled(Counter, "alignnet_lsl_reconnects_total", "LSL source losses")
        self.lag = labelled(Histogram, "alignnet_lsl_lag_seconds", "input time stamp -> output pushed",
                            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
        self.connected = labelled(Gauge, "alignnet_lsl_connected", "1 while the source stream is connected")


class Bridge:
    """Runs one direction in a background thread. ``engine()`` returns the engine to use now (hot reload)."""

    def __init__(self, cfg: BridgeConfig, engine: Callable[[], Any], metrics: BridgeMetrics | None = None,
                 collector: Any = None, observers: tuple = ()) -> None:
        self.cfg, self.collector = cfg, collector  # collector: binning.BlockCollector (session calibration)
        self.observers = [o for o in (collector, *observers) if o is not None]  # + the drift monitor
        self.get_engine = engine
        self.metrics = metrics
        self.state = "starting"
        self.error: str | None = None
        self.source: dict[str, Any] | None = None
        self.counts = {"samples": 0, "bins": 0, "hops": 0, "pushed": 0, "dropped": 0, "reconnects": 0}
        self.last_lag_s: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outlet = None
        self._outlet_key: tuple | None = None
        self._rng = np.random.default_rng(cfg.seed)

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
                "calibration_block": self.collector.status() if self.collector is not None else None}

    def _metric(self, name: str, *labels: str):
        return None if self.metrics is None else getattr(self.metrics, name).labels(self.cfg.direction, *labels)

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
                engine = self.get_engine()
                if engine is None:
                    self.state, self.error = "waiting for model", "no model loaded"
                    self._stop.wait(0.5)
                    continue
                self.state = "resolving"
                info, why = resolve(self.cfg)
                if info is None:
                    self.error = why
                    continue
                self._stream(info, engine)
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

    def _stream(self, info, engine) -> None:
        """Stream from one resolved source until it is lost, the model changes or the bridge stops."""
        c = engine.contract
        d = direction_for(self.cfg, c)
        events, factor, dtype = check_source(info, d, c)
        inlet = open_inlet(info, self.cfg)
        self.source = {"name": info.name(), "type": info.type(), "channels": info.channel_count(),
                       "rate_hz": info.nominal_srate(), "hostname": info.hostname(), "source_id": info.source_id(),
                       "events": events}
        self._ensure_outlet(info.name(), d, c)
        feed = Feed(d, c, events, factor, self.cfg.event_lateness_s, self._drop)
        ring = Ring(d.n_in, c.window_bins, d.fill)
        buf = np.zeros((max(64, int((info.nominal_srate() or 1000) * self.cfg.buffer_s)), info.channel_count()),
                       dtype)  # liblsl writes the stream's own type into it
        pending: list[float] = []
        self.state, self.error = "streaming", None
        self._set_connected(1)
        try:
            while not self._stop.is_set():
                current = self.get_engine()
                if current is not engine:  # hot reload: the source must be checked against the new contract
                    if current is None or current.contract.to_dict() != c.to_dict():
                        log.info("model changed: re-checking the LSL source")
                        return
                    engine = current
                x, stamps = read_chunk(inlet, buf)
                self._count("samples", len(stamps), "samples")
                bins, bin_stamps = feed.bins(x, stamps)
                if len(bins):
                    pending = self._advance(engine, d, ring, bins, bin_stamps, pending)
        finally:
            self._set_connected(0)
            inlet.close_stream()

    def _advance(self, engine, d: Direction, ring: Ring, bins: np.ndarray, stamps: np.ndarray,
                 pending: list[float]) -> list[float]:
        """Push new bins into the ring and run every hop they complete; returns the stamps still waiting for a
        hop. A backlog beyond ``max_lag_bins`` is skipped: only the newest hop is run."""
        self.counts["bins"] += len(bins)
        for observer in self.observers if d.counts else ():  # add(bins, engine, ring)
            observer.add(bins, engine, ring)
        hop = self.cfg.hop_bins
        if len(pending) + len(bins) > self.cfg.max_lag_bins:  # fell behind: decode only the newest hop
            waiting = pending + stamps.tolist()
            self._drop(len(waiting) - hop, "lag")
            ring.push(bins)
            self._hop(engine, d, ring, waiting[-hop:])
            return []
        for row, t in zip(bins, stamps.tolist()):  # every hop, in order
            ring.push(row[None])
            pending.append(t)
            if len(pending) == hop:
                self._hop(engine, d, ring, pending)
                pending = []
        return pending

    def _hop(self, engine, d: Direction, ring: Ring, stamps: list[float]) -> None:
        """Run the engine on the ring buffer and push the last len(stamps) bins with their input stamps."""
        y = (engine.decode if d.counts else engine.simulate)(ring.buf[None])[0]
        if not d.counts and self.cfg.sample:
            y = self._rng.poisson(y).astype(np.float32)
        k = len(stamps)
        for row, t in zip(np.ascontiguousarray(y[:, -k:].T, np.float32), stamps):
            self._outlet.push_sample(row, t)
        self.last_lag_s = pylsl.local_clock() - stamps[-1]
        lag_metric = self._metric("lag")
        if lag_metric is not None:
            lag_metric.observe(max(self.last_lag_s, 0.0))
        self._count("hops", 1, "hops")
        self._count("pushed", k)

    def _set_connected(self, value: int) -> None:
        m = self._metric("connected")
        if m is not None:
            m.set(value)

    def _ensure_outlet(self, source_name: str, d: Direction, c: DataContract) -> None:
        """Create the output stream once (consumers stay connected across source losses); recreate it only when a
        reloaded model changes the output's shape or rate."""
        key = (d.n_out, c.bin_s)
        if self._outlet is not None and self._outlet_key == key:
            return
        self._outlet_key = key
        self.cfg.output_name = self.cfg.output_name or f"{source_name}-{d.out_suffix}"
        info = pylsl.StreamInfo(self.cfg.output_name, d.out_type, d.n_out, 1.0 / c.bin_s, "float32",
                                f"alignnet-{d.name}-{source_name}")
        info.set_channel_labels(d.out_labels)
        desc = info.desc()
        desc.append_child_value("producer", "alignnet-bci")
        desc.append_child_value("stamps", "LSL time of the input bin each sample was computed from")
        desc.append_child_value("units", d.out_units)
        self._outlet = pylsl.StreamOutlet(info, chunk_size=1, max_buffered=max(1, int(self.cfg.buffer_s)))


@dataclass
class Bridges:
    """The bridges the app runs (zero, one or both directions)."""

    items: list[Bridge] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        if not self.items:
            return {"state": "disabled"}
        states = [b.state for b in self.items]
        overall = "streaming" if all(s == "streaming" for s in states) else \
            next(s for s in states if s != "streaming")
        return {"state": overall, "bridges": [b.status() for b in self.items]}

    def stop(self) -> None:
        for b in self.items:
            b.stop()
