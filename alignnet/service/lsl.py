"""Lab Streaming Layer bridge: spikes in -> decoded behavior out (and behavior in -> simulated spikes out).

One ``Bridge`` per direction runs in its own thread. The path of one sample:

1. ``resolve``: find the source stream by name and/or type, with a timeout (nothing found: wait and try again);
2. ``check_source``: refuse a stream that does not fit the served contract: channel count, and a nominal rate
   equal to the bin rate or an integer multiple of it (re-binned: counts summed, behavior averaged); a decode
   source may also be an irregular stream of spike events (one channel: the channel index of each spike), binned
   on its time stamps;
3. ``open_inlet`` with a bounded buffer and pylsl's clock synchronisation where the source runs on another host
   (on the same host stamps are left exactly as sent); ``read_chunk`` pulls into a preallocated array;
4. ``RateWatch``: refuse a regular source whose stamps run off its declared rate (``rate_tolerance``);
   ``Feed.bins``: clean bad samples (NaN, inf, negative, fractional or implausible counts: zeroed and counted as
   dropped) and bin them;
5. ``Bridge._advance``: push bins into the ring buffer of one window and run the engine every hop (default one
   bin); when more than ``max_lag_bins`` bins wait at once only the newest hop is decoded (the skipped bins still
   fill the ring and are counted as dropped), so lag cannot grow. An artifact with ``decode_stream.npz`` decodes
   each bin incrementally instead (``model/incremental.py``: the same numbers as the window's newest bin, from
   cached columns), unless ``incremental`` is off: ``_advance_live`` hands the bins to the engine's stream pool
   (``service/live.py``) and goes back to the source; the pool's thread steps every source's bins in one batch and
   pushes each source's outputs (``_decoded``); at most ``max_lag_bins`` bins of a source are in flight;
6. ``Bridge._emit``: push the last hop's outputs, each stamped with the LSL time of the input bin it came from, so
   downstream measures latency by comparing stamps.

A source that vanishes is resolved again (``/health`` and ``alignnet_lsl_reconnects_total`` show it). liblsl
(pylsl) does discovery, transport and clocks; binning lives in ``alignnet.service.binning``.
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
from alignnet.service.binning import Ring
from alignnet.service.lsl_io import (  # noqa: F401
    BridgeMetrics,
    Direction,
    Feed,
    InFlight,
    RateWatch,
    SourceLost,
    StallWatch,
    StreamMismatch,
    check_source,
    direction_for,
    open_inlet,
    outlet_info,
    read_chunk,
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
    batch_wait_s: float = 0.001  # incremental: the pool waits up to this long for every source's bin before a step

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
class Bridge:
    """Runs one direction in a background thread. ``engine()`` returns the engine to use now (hot reload)."""

    def __init__(self, cfg: BridgeConfig, engine: Callable[[], Any], metrics: BridgeMetrics | None = None,
                 collector: Any = None, observers: tuple = (), batcher: Any = None) -> None:
        self.cfg, self.collector = cfg, collector  # collector: binning.BlockCollector (session calibration)
        self.batcher = batcher  # batching.HopBatcher shared with other sources' bridges, or None
        self.stream = cfg.source_name or f"type:{cfg.source_type}"  # the metrics' label
        self.observers = [o for o in (collector, *observers) if o is not None]  # + the drift monitor
        self.get_engine = engine
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
        self._rng = np.random.default_rng(cfg.seed)
        self.live = None  # service.live.LiveStream of the current source, when decoding incrementally
        self._live_pending: list = []  # (stamp, output) pairs short of a hop; the pool's thread's alone
        self._live_error: BaseException | None = None  # a failed step, raised on the bridge's thread
        self._in_flight = InFlight(cfg.max_lag_bins)  # bins handed to the pool and not yet back

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
                "decoding": "incremental" if self.live is not None else "window",
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
        self._open_live(engine, d, None)
        buf = np.zeros((max(64, int((info.nominal_srate() or 1000) * self.cfg.buffer_s)), info.channel_count()),
                       dtype)  # liblsl writes the stream's own type into it
        pending: list[float] = []
        self.state, self.error = "streaming", None
        self._set_connected(1)
        watch = StallWatch(self, info, events)
        self.rate = None if events else RateWatch(self, info.nominal_srate(), self.cfg.rate_tolerance,
                                                  speed=replay_speed(inlet, self.cfg.resolve_timeout_s))
        try:
            while not self._stop.is_set():
                current = self.get_engine()
                if current is not engine:  # hot reload: the source must be checked against the new contract
                    if current is None or current.contract.to_dict() != c.to_dict():
                        log.info("model changed: re-checking the LSL source")
                        return None
                    engine = current
                    self._open_live(engine, d, ring)
                    if pending:  # a part-filled hop of the previous model
                        self._drop(len(pending), "reload")
                        pending = []
                x, stamps = read_chunk(inlet, buf)
                if (other := watch.after_pull(len(stamps))) is not None:
                    return other
                self._count("samples", len(stamps), "samples")
                if self.rate is not None and self.rate.observe(stamps):
                    self._drop(len(stamps), "rate")
                    continue
                bins, bin_stamps = feed.bins(x, stamps)
                if len(bins):
                    pending = self._advance(engine, d, ring, bins, bin_stamps, pending)
        finally:
            self._set_connected(0)
            inlet.close_stream()
        return None

    def _advance(self, engine, d: Direction, ring: Ring, bins: np.ndarray, stamps: np.ndarray,
                 pending: list[float]) -> list[float]:
        """Push new bins into the ring and run every hop they complete; returns the stamps still waiting for a
        hop. A backlog beyond ``max_lag_bins`` is skipped: only the newest hop is run."""
        self.counts["bins"] += len(bins)
        for observer in self.observers if d.counts else ():  # add(bins, engine, ring)
            observer.add(bins, engine, ring)
        hop = self.cfg.hop_bins
        if self.live is not None:
            return self._advance_live(ring, bins, stamps)
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

    def _open_live(self, engine, d: Direction, ring: Ring | None) -> None:
        """Decode incrementally where the artifact can; a model swapped in mid-stream starts from the ring."""
        live = engine.open_stream(self.cfg.batch_wait_s) if d.counts and self.cfg.incremental and engine.can_stream \
            else None
        if live is not None and ring is not None:
            live.prime(ring.buf)
        self._live_pending, self._in_flight = [], InFlight(self.cfg.max_lag_bins)
        self.live = live

    def _advance_live(self, ring: Ring, bins: np.ndarray, stamps: np.ndarray) -> list:
        """Every bin is decoded as it comes (the history needs each). With other sources on the model, the bins go to
        the pool's thread and the bridge is back at its source at once; that thread pushes the outputs
        (``_decoded``), and more than ``max_lag_bins`` in flight make the bridge wait (a pool that falls behind
        slows its sources instead of queueing without end). A lone source with nothing in flight steps its own bins
        (no hand-off to another thread, as before the pool had one)."""
        if self._live_error is not None:
            error, self._live_error = self._live_error, None
            raise error
        ring.push(bins)
        live, flight, t = self.live, self._in_flight, stamps.tolist()
        if flight.n == 0 and live.pool.open_rows() <= 1:
            self._decoded(live, None, t, live.push(bins), None)
            return []
        flight.take(len(bins))
        live.submit(bins, lambda y, error: self._decoded(live, flight, t, y, error))
        return []

    def _decoded(self, live, flight: InFlight | None, stamps: list[float], y, error) -> None:
        """Outputs pushed a hop at a time with their inputs' stamps (the newest hop only when more than
        ``max_lag_bins`` wait). Those of a stream since replaced (a new model or source) or of a stopped bridge are
        dropped; a failed step is raised on the bridge's thread. Bins in flight are given back when done."""
        try:
            self._push_decoded(live, stamps, y, error)
        finally:
            if flight is not None:
                flight.give(len(stamps))

    def _push_decoded(self, live, stamps: list[float], y, error) -> None:
        if error is not None:
            self._live_error = error
            return
        if live is not self.live or self._outlet is None:
            self._drop(len(stamps), "reload")
            return
        hop = self.cfg.hop_bins
        pending = self._live_pending + list(zip(stamps, y.T))
        if len(pending) > self.cfg.max_lag_bins:
            self._drop(len(pending) - hop, "lag")
            pending = pending[-hop:]
        while len(pending) >= hop:
            self._emit(np.stack([v for _, v in pending[:hop]], axis=1), [t for t, _ in pending[:hop]])
            pending = pending[hop:]
        self._live_pending = pending

    def _hop(self, engine, d: Direction, ring: Ring, stamps: list[float]) -> None:
        """Run the engine on the ring buffer and push the last len(stamps) bins with their input stamps."""
        k = len(stamps)
        if not d.counts:
            y = engine.simulate(ring.buf[None])[0]
        elif self.batcher is not None:  # with the other sources' hops that fall due now
            y = self.batcher.decode_newest(engine, ring.buf, k)
        else:
            y = engine.decode_newest(ring.buf[None], k)[0]
        if not d.counts and self.cfg.sample:
            y = self._rng.poisson(y).astype(np.float32)
        self._emit(y, stamps)

    def _emit(self, y: np.ndarray, stamps: list[float]) -> None:
        """Push the last len(stamps) bins of ``y`` (D, >= k), each with its input's stamp; count and time them."""
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
        if self.batcher is not None:
            out["batching"] = {"wait_s": self.batcher.wait_s, "workers": self.batcher.workers, **self.batcher.stats}
        pools = {id(b.live.pool): b.live.pool for b in self.items if b.live is not None}
        if pools:  # incremental decoding: bins stepped together (service/live.py)
            out["incremental"] = [dict(p.stats) for p in pools.values()]
        return out

    def stop(self) -> None:
        for b in self.items:
            b.stop()
        if self.batcher is not None:
            self.batcher.stop()
