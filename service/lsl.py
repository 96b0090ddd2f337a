"""Lab Streaming Layer bridge: spikes in -> decoded behavior out (and behavior in -> simulated spikes out).

One ``Bridge`` per direction runs in its own thread:

1. resolve the source stream by name and/or type, with a timeout (nothing found: wait and try again);
2. check it against the served contract and refuse a mismatch: channel count, and a nominal rate equal to the bin
   rate or an integer multiple of it (re-binned: counts summed, behavior averaged); a decode source may also be an
   irregular stream of spike events (one channel: the channel index of each spike), binned on its time stamps;
3. keep a ring buffer of one window, run the engine every hop (default one bin) and push the last hop's bins, each
   stamped with the LSL time of the input bin it came from (converted to this host's clock; on the same host that
   is the input's own time stamp, so downstream measures latency by comparing stamps);
4. survive the source vanishing (the inlet reports the loss; the bridge resolves again, visible in ``/health`` and
   in the ``alignnet_lsl_reconnects_total`` metric) and bad samples (NaN, inf, negative counts are zeroed and
   counted as dropped);
5. keep lag bounded: the inlet buffer holds ``buffer_s`` seconds, and when more than ``max_lag_bins`` bins wait at
   once only the newest hop is decoded (the skipped bins still fill the ring buffer and are counted as dropped).

The ring buffer, the re-binning and the event binning are written here (a few lines of numpy); liblsl (pylsl) does
discovery, transport and clocks.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pylsl

from model.contract import DataContract

log = logging.getLogger(__name__)

DIRECTIONS = ("decode", "simulate")


# LSL channel formats the bridge reads, and the numpy type liblsl writes for each
LSL_DTYPES = {pylsl.cf_float32: np.float32, pylsl.cf_double64: np.float64, pylsl.cf_int8: np.int8,
              pylsl.cf_int16: np.int16, pylsl.cf_int32: np.int32, pylsl.cf_int64: np.int64}


class StreamMismatch(ValueError):
    """A source stream that does not fit the served contract."""


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


# ---- binning (pure numpy, tested without LSL) -------------------------------------------------------------------
class RegularBinner:
    """Samples at ``factor`` x the bin rate -> bins: counts are summed, behavior averaged. A bin is stamped with the
    time stamp of its last sample."""

    def __init__(self, factor: int, n_channels: int, reduce: str = "sum") -> None:
        self.factor, self.reduce = int(factor), reduce
        self.acc = np.zeros(n_channels, np.float64)
        self.n = 0

    def reset(self) -> None:
        self.acc[:] = 0
        self.n = 0

    def feed(self, samples: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, C) samples, (n,) stamps -> (m, C) bins, (m,) stamps."""
        if self.factor == 1:
            return samples.astype(np.float32), np.asarray(stamps, np.float64)
        bins, out_stamps = [], []
        for x, t in zip(samples, stamps):
            self.acc += x
            self.n += 1
            if self.n == self.factor:
                bins.append(self.acc / self.factor if self.reduce == "mean" else self.acc.copy())
                out_stamps.append(t)
                self.reset()
        if not bins:
            return np.zeros((0, self.acc.size), np.float32), np.zeros(0)
        return np.asarray(bins, np.float32), np.asarray(out_stamps)


class EventBinner:
    """Irregular spike events (channel index, time stamp) -> counts per bin on a grid anchored at the first event.
    A bin closes once ``now`` (this host's LSL clock, in the source's time) passes its end plus ``lateness``; it is
    stamped with its end time."""

    def __init__(self, bin_s: float, n_channels: int, lateness_s: float) -> None:
        self.bin_s, self.n_channels, self.lateness = float(bin_s), int(n_channels), float(lateness_s)
        self.reset()

    def reset(self) -> None:
        self.t0: float | None = None
        self.next_bin = 0
        self.pending: dict[int, np.ndarray] = {}

    def feed(self, channels: np.ndarray, stamps: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray, int]:
        """Returns (m, C) closed bins, (m,) their end stamps and the number of events dropped (late or bad)."""
        bad = 0
        for ch, t in zip(np.asarray(channels, np.float64).ravel(), stamps):
            if self.t0 is None:
                self.t0 = float(t)
            k = int(np.floor((t - self.t0) / self.bin_s))
            if not np.isfinite(ch) or ch != int(ch) or not 0 <= ch < self.n_channels or k < self.next_bin:
                bad += 1
                continue
            self.pending.setdefault(k, np.zeros(self.n_channels, np.float32))[int(ch)] += 1
        if self.t0 is None:
            return np.zeros((0, self.n_channels), np.float32), np.zeros(0), bad
        last = int(np.floor((now - self.lateness - self.t0) / self.bin_s))  # bins [next_bin, last) are closed
        if last <= self.next_bin:
            return np.zeros((0, self.n_channels), np.float32), np.zeros(0), bad
        ks = range(self.next_bin, last)
        bins = np.stack([self.pending.pop(k, np.zeros(self.n_channels, np.float32)) for k in ks])
        stamps = self.t0 + (np.arange(self.next_bin, last) + 1) * self.bin_s
        self.next_bin = last
        return bins, stamps, bad


class Ring:
    """The last ``window`` bins, (C, window); starts as zeros (no spikes / rest) so the first bin is decoded too."""

    def __init__(self, n_channels: int, window: int, fill: np.ndarray | None = None) -> None:
        self.fill = np.zeros(n_channels, np.float32) if fill is None else np.asarray(fill, np.float32)
        self.buf = np.repeat(self.fill[:, None], window, axis=1)

    def reset(self) -> None:
        self.buf[:] = self.fill[:, None]

    def push(self, bins: np.ndarray) -> None:
        """(m, C) bins, oldest first."""
        m = min(len(bins), self.buf.shape[1])
        if m:
            self.buf = np.concatenate([self.buf[:, m:], bins[-m:].T], axis=1)


def sanitize(x: np.ndarray, counts: bool, last: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Replace non-finite values (and negative counts) so one bad sample cannot poison a window: counts become 0,
    behavior holds the last good value. Returns (clean array, number of samples that had a bad value)."""
    bad = ~np.isfinite(x)
    if counts:
        bad |= x < 0
    rows = bad.any(axis=1)
    if not rows.any():
        return x, 0
    x = x.copy()
    if counts:
        x[bad] = 0
    else:
        for i in np.flatnonzero(rows):
            prev = x[i - 1] if i > 0 else (last if last is not None else np.zeros(x.shape[1], x.dtype))
            x[i, bad[i]] = prev[bad[i]]
    return x, int(rows.sum())


# ---- the bridge --------------------------------------------------------------------------------------------------
class BridgeMetrics:
    """Prometheus metrics of the bridges, registered on the app's registry."""

    def __init__(self, registry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.samples = Counter("alignnet_lsl_samples_total", "LSL input samples received", ["direction"],
                               registry=registry)
        self.dropped = Counter("alignnet_lsl_samples_dropped_total", "LSL input samples dropped or zeroed",
                               ["direction", "reason"], registry=registry)
        self.hops = Counter("alignnet_lsl_hops_total", "engine runs of the LSL bridge", ["direction"],
                            registry=registry)
        self.reconnects = Counter("alignnet_lsl_reconnects_total", "LSL source losses", ["direction"],
                                  registry=registry)
        self.lag = Histogram("alignnet_lsl_lag_seconds", "input time stamp -> output pushed", ["direction"],
                             registry=registry, buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
        self.connected = Gauge("alignnet_lsl_connected", "1 while the source stream is connected", ["direction"],
                               registry=registry)


class Bridge:
    """Runs one direction in a background thread. ``engine()`` returns the engine to use now (hot reload)."""

    def __init__(self, cfg: BridgeConfig, engine: Callable[[], Any], metrics: BridgeMetrics | None = None) -> None:
        self.cfg = cfg
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
        self._outlet_shape: tuple | None = None
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
                "output": self.cfg.output_name, **self.counts, "lag_s": self.last_lag_s}

    def _metric(self, name: str, *labels: str):
        if self.metrics is None:
            return None
        return getattr(self.metrics, name).labels(self.cfg.direction, *labels)

    def _inc(self, name: str, n: float = 1, *labels: str) -> None:
        m = self._metric(name, *labels)
        if m is not None and n:
            m.inc(n)

    # ---- the loop ----
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                engine = self.get_engine()
                if engine is None:
                    self.state, self.error = "waiting for model", "no model loaded"
                    self._stop.wait(0.5)
                    continue
                info = self._resolve()
                if info is not None:
                    self._stream(info, engine)
            except StreamMismatch as e:
                self.state, self.error = "refused", str(e)
                log.error("LSL source refused: %s", e)
                self._stop.wait(self.cfg.resolve_timeout_s)
            except Exception as e:  # keep the bridge alive whatever happens; the error is visible in /health
                self.state, self.error = "error", f"{type(e).__name__}: {e}"
                log.exception("LSL bridge error")
                self._stop.wait(1.0)
        self.state = "stopped"

    def _resolve(self):
        self.state = "resolving"
        cfg = self.cfg
        parts = [f"name='{cfg.source_name}'" if cfg.source_name else "", f"type='{cfg.source_type}'"
                 if cfg.source_type else ""]
        pred = " and ".join(p for p in parts if p)
        found = pylsl.resolve_bypred(pred, 1, cfg.resolve_timeout_s)
        if not found:
            self.error = f"no LSL stream with {pred} found within {cfg.resolve_timeout_s:g} s; still looking"
            return None
        return found[0]

    def _stream(self, info, engine) -> None:
        cfg, c = self.cfg, engine.contract
        decode = cfg.direction == "decode"
        want = c.n_channels if decode else c.behavior_dims
        rate, n_in = info.nominal_srate(), info.channel_count()
        events = decode and rate == pylsl.IRREGULAR_RATE
        if events:
            if n_in != 1:
                raise StreamMismatch(f"stream '{info.name()}' is irregular (spike events) with {n_in} channels; an "
                                     "event stream carries one channel: the channel index of each spike")
        else:
            if n_in != want:
                raise StreamMismatch(f"stream '{info.name()}' has {n_in} channels; the model expects {want} "
                                     f"({'spike channels' if decode else 'behavior dims'})")
            factor = rate * c.bin_s
            if rate <= 0 or factor < 1 - 1e-6 or abs(factor - round(factor)) > 1e-6:
                raise StreamMismatch(f"stream '{info.name()}' runs at {rate:g} Hz; the model needs {1 / c.bin_s:g} Hz "
                                     "or an integer multiple of it (re-binned)")
        dtype = LSL_DTYPES.get(info.channel_format())
        if dtype is None:
            raise StreamMismatch(f"stream '{info.name()}' carries {info.channel_format()!r}-typed values; the bridge "
                                 "reads numbers (float32, double64, int8/16/32/64)")
        inlet = pylsl.StreamInlet(info, max_buflen=cfg.buffer_s, recover=False, processing_flags=pylsl.proc_none)
        inlet.open_stream(timeout=cfg.resolve_timeout_s)
        # the same host shares one clock; elsewhere liblsl estimates the offset (refreshed below)
        same_host = info.hostname() == socket.gethostname()
        offset = 0.0 if same_host else inlet.time_correction(timeout=2.0)
        self.source = {"name": info.name(), "type": info.type(), "channels": n_in, "rate_hz": rate,
                       "hostname": info.hostname(), "source_id": info.source_id(), "events": events,
                       "clock_offset_s": offset}
        self._ensure_outlet(info.name(), engine.contract)
        binner = EventBinner(c.bin_s, c.n_channels, cfg.event_lateness_s) if events else \
            RegularBinner(int(round(rate * c.bin_s)), n_in, "sum" if decode else "mean")
        fill = None if decode else np.asarray(c.behavior_mean, np.float32)  # behavior rests at its mean
        ring = Ring(want, c.window_bins, fill)
        chunk = max(64, int((rate or 1000) * cfg.buffer_s))
        buf = np.zeros((chunk, n_in), dtype)  # liblsl writes the stream's own type into it
        last_good = None
        pending: list[float] = []
        self.state, self.error = "streaming", None
        self._set_connected(1)
        next_sync = time.monotonic() + 5.0
        try:
            while not self._stop.is_set():
                current = self.get_engine()
                if current is not engine:  # hot reload: check the source against the new contract
                    if current is None or current.contract.to_dict() != c.to_dict():
                        log.info("model changed: re-checking the LSL source")
                        return
                    engine = current
                try:
                    x, stamps = inlet.pull_chunk(timeout=0.05, max_samples=chunk, dest_obj=buf, min_samples=1,
                                                 as_numpy=True)
                except pylsl.util.LostError:
                    self.counts["reconnects"] += 1
                    self._inc("reconnects")
                    self.state, self.error = "reconnecting", f"source '{info.name()}' lost; resolving again"
                    log.warning("LSL source %s lost; resolving again", info.name())
                    return
                if not same_host and time.monotonic() > next_sync:
                    offset = inlet.time_correction(timeout=0.5)
                    self.source["clock_offset_s"] = offset
                    next_sync = time.monotonic() + 5.0
                n = len(stamps)
                stamps = np.asarray(stamps, np.float64) + offset
                if n:
                    self.counts["samples"] += n
                    self._inc("samples", n)
                if events:
                    bins, bstamps, bad = binner.feed(x[:n, 0] if n else np.zeros(0), stamps,
                                                     pylsl.local_clock())
                    if bad:
                        self._drop(bad, "bad event")
                else:
                    if not n:
                        continue
                    clean, bad = sanitize(x[:n].astype(np.float32), counts=decode, last=last_good)
                    if bad:
                        self._drop(bad, "bad value")
                    last_good = clean[-1]
                    bins, bstamps = binner.feed(clean, stamps)
                if not len(bins):
                    continue
                self.counts["bins"] += len(bins)
                if len(pending) + len(bins) > cfg.max_lag_bins:  # fell behind: decode only the newest hop
                    stamps_all = pending + bstamps.tolist()
                    self._drop(len(stamps_all) - cfg.hop_bins, "lag")
                    ring.push(bins)
                    self._hop(engine, ring, stamps_all[-cfg.hop_bins:])
                    pending = []
                    continue
                for row, t in zip(bins, bstamps.tolist()):  # decode every hop, in order
                    ring.push(row[None])
                    pending.append(t)
                    if len(pending) == cfg.hop_bins:
                        self._hop(engine, ring, pending)
                        pending = []
        finally:
            self._set_connected(0)
            inlet.close_stream()

    def _set_connected(self, value: int) -> None:
        m = self._metric("connected")
        if m is not None:
            m.set(value)

    def _drop(self, n: int, reason: str) -> None:
        self.counts["dropped"] += int(n)
        self._inc("dropped", n, reason)

    def _ensure_outlet(self, source_name: str, c: DataContract) -> None:
        """Create the output stream once (consumers stay connected across source losses); recreate it only when a
        reloaded model changes the output's shape or rate."""
        decode = self.cfg.direction == "decode"
        shape = (c.behavior_dims if decode else c.n_channels, c.bin_s)
        if self._outlet is not None and self._outlet_shape == shape:
            return
        self._outlet_shape = shape
        name = self.cfg.output_name or f"{source_name}-{'decoded' if decode else 'simulated'}"
        self.cfg.output_name = name
        n = c.behavior_dims if decode else c.n_channels
        info = pylsl.StreamInfo(name, "DecodedBehavior" if decode else "SimulatedSpikes", n, 1.0 / c.bin_s, "float32",
                                f"alignnet-{self.cfg.direction}-{source_name}")
        labels = list(c.behavior_names) if decode else [f"ch{i}" for i in range(n)]
        info.set_channel_labels(labels)
        desc = info.desc()
        desc.append_child_value("producer", "alignnet-bci")
        desc.append_child_value("stamps", "LSL time of the input bin each sample was computed from")
        desc.append_child_value("units", c.behavior_kind if decode else
                                ("spike counts per bin" if self.cfg.sample else "expected spike counts per bin"))
        self._outlet = pylsl.StreamOutlet(info, chunk_size=1, max_buffered=max(1, int(self.cfg.buffer_s)))

    def _hop(self, engine, ring: Ring, stamps: list[float]) -> None:
        """Run the engine on the ring buffer and push the last len(stamps) bins with their input stamps."""
        x = ring.buf[None]
        try:
            y = (engine.decode(x) if self.cfg.direction == "decode" else engine.simulate(x))[0]
        except ValueError as e:  # the contract refused the window (cannot happen after sanitize; kept visible)
            self._drop(len(stamps), "refused")
            self.error = str(e)
            return
        if self.cfg.direction == "simulate" and self.cfg.sample:
            y = self._rng.poisson(y).astype(np.float32)
        k = len(stamps)
        out = np.ascontiguousarray(y[:, -k:].T, np.float32)
        for row, t in zip(out, stamps):
            self._outlet.push_sample(row, t)
        lag = pylsl.local_clock() - stamps[-1]
        self.last_lag_s = lag
        lag_metric = self._metric("lag")
        if lag_metric is not None:
            lag_metric.observe(max(lag, 0.0))
        self.counts["hops"] += 1
        self.counts["pushed"] += k
        self._inc("hops")


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
