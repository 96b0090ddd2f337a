"""The steps of one LSL sample's path before the engine: find the source, check it against the contract, open a
bounded inlet, pull chunks, clean and bin them (see ``alignnet.service.live.lsl`` for the whole path)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pylsl

from alignnet.model.contract import DataContract
from alignnet.service.live.binning import max_count

log = logging.getLogger(__name__)

# LSL channel formats the bridge reads, and the numpy type liblsl writes for each
LSL_DTYPES = {pylsl.cf_float32: np.float32, pylsl.cf_double64: np.float64, pylsl.cf_int8: np.int8,
              pylsl.cf_int16: np.int16, pylsl.cf_int32: np.int32, pylsl.cf_int64: np.int64}


class StreamMismatch(ValueError):
    """A source stream that does not fit the served contract."""


class SourceLost(RuntimeError):
    """The source stream went away (liblsl reported the loss)."""


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


def direction_for(cfg, c: DataContract) -> Direction:
    if cfg.direction == "decode":
        return Direction("decode", c.n_channels, c.behavior_dims, True, np.zeros(c.n_channels, np.float32),
                         "DecodedBehavior", "decoded", list(c.behavior_names), c.behavior_kind)
    return Direction("simulate", c.behavior_dims, c.n_channels, False, np.asarray(c.behavior_mean, np.float32),
                     "SimulatedSpikes", "simulated", [f"ch{i}" for i in range(c.n_channels)],
                     "spike counts per bin" if cfg.sample else "expected spike counts per bin")


# ---- the steps of one sample's path ------------------------------------------------------------------------------
def resolve(cfg, exclude_uid: str | None = None, timeout: float | None = None) -> tuple[Any | None, str]:
    """The first stream matching the config's name and/or type within the timeout (other than the stream
    ``exclude_uid``: a stalled one), or (None, why)."""
    parts = [f"name='{cfg.source_name}'" if cfg.source_name else "",
             f"type='{cfg.source_type}'" if cfg.source_type else "",
             f"uid!='{exclude_uid}'" if exclude_uid else ""]
    pred = " and ".join(p for p in parts if p)
    timeout = cfg.resolve_timeout_s if timeout is None else timeout
    found = pylsl.resolve_bypred(pred, 1, timeout)
    if not found:
        return None, f"no LSL stream with {pred} found within {timeout:g} s; still looking"
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


def open_inlet(info, cfg):
    """A bounded inlet. Another host's stamps are mapped to this clock by liblsl (``proc_clocksync``); on the same
    host they stay exactly as sent, so consumers can match outputs to inputs by stamp."""
    same_host = info.hostname() == socket.gethostname()
    flags = pylsl.proc_none if same_host else pylsl.proc_clocksync
    inlet = pylsl.StreamInlet(info, max_buflen=cfg.buffer_s, recover=False, processing_flags=flags)
    inlet.open_stream(timeout=cfg.resolve_timeout_s)
    return inlet


def replay_speed(inlet, timeout: float) -> float:
    """How many times faster than recorded a source says it sends (``desc/replay_speed``, written by ``alignnet
    replay --speed``): its bins still span the declared rate's time, they only arrive sooner. 1 for any other
    source (or a field that is not a positive number)."""
    try:
        value = float(inlet.info(timeout).desc().child_value("replay_speed") or 1.0)
    except (ValueError, pylsl.util.TimeoutError):
        return 1.0
    return value if np.isfinite(value) and value > 0 else 1.0


class BridgeMetrics:
    """Prometheus metrics of the bridges, registered on the app's registry."""

    def __init__(self, registry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def labelled(kind, name: str, doc: str, *labels: str, **kw):
            return kind(name, doc, ["direction", "stream", *labels], registry=registry, **kw)

        self.samples = labelled(Counter, "alignnet_lsl_samples_total", "LSL input samples received")
        self.dropped = labelled(Counter, "alignnet_lsl_samples_dropped_total", "LSL input samples dropped or zeroed",
                                "reason")
        self.hops = labelled(Counter, "alignnet_lsl_hops_total", "engine runs of the LSL bridge")
        self.reconnects = labelled(Counter, "alignnet_lsl_reconnects_total", "LSL source losses")
        self.stalls = labelled(Counter, "alignnet_lsl_stalls_total", "LSL sources that stopped sending (frozen)")
        self.lag = labelled(Histogram, "alignnet_lsl_lag_seconds", "input time stamp -> output pushed",
                            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
        self.connected = labelled(Gauge, "alignnet_lsl_connected", "1 while the source stream is connected")
        self.rate = labelled(Gauge, "alignnet_lsl_rate_hz", "source sample rate measured from its stamps")
        self.rate_mismatch = labelled(Gauge, "alignnet_lsl_rate_mismatch", "1 while the source is refused: its "
                                      "measured rate is off its nominal by more than the tolerance")


class Feed:
    """Samples of one source -> clean bins with their stamps: regular streams re-binned by ``factor``, spike events
    binned on their stamps. ``drop(n, reason)`` is told about every bad sample."""

    def __init__(self, d: Direction, c: DataContract, events: bool, factor: int, lateness_s: float,
                 drop: Callable[[int, str], None]) -> None:
        self.d, self.events, self.drop = d, events, drop
        self.binner = EventBinner(c.bin_s, c.n_channels, lateness_s) if events else \
            RegularBinner(factor, d.n_in, "sum" if d.counts else "mean")
        self.last_good: np.ndarray | None = None
        self.most = max_count(c.bin_s / factor) if d.counts else np.inf  # one sample's plausible count

    def bins(self, x: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.events:
            bins, out_stamps, bad = self.binner.feed(x[:, 0] if len(x) else np.zeros(0), stamps, pylsl.local_clock())
            if bad:
                self.drop(bad, "bad event")
            return bins, out_stamps
        if not len(x):
            return np.zeros((0, self.d.n_in), np.float32), stamps
        clean, bad = sanitize(x.astype(np.float32), counts=self.d.counts, last=self.last_good, most=self.most)
        if bad:
            self.drop(bad, "bad value")
        self.last_good = clean[-1]
        return self.binner.feed(clean, stamps)




class StallWatch:
    """A source that stops sending without going away (a frozen process, a stuck acquisition loop) is never reported
    lost by liblsl. After ``stall_s`` of silence (five times more, at least 5 s, for spike-event streams, which go
    quiet at rest) the bridge says "stalled" in /health, counts it, and looks twice a second for another source of
    the same name and type; it keeps listening to the silent one meanwhile, and streams on if it resumes."""

    def __init__(self, bridge, info, events: bool) -> None:
        self.bridge, self.info = bridge, info
        self.limit = max(5.0, 5 * bridge.cfg.stall_s) if events else bridge.cfg.stall_s
        self.last = time.monotonic()
        self.stalled, self.next_look = False, 0.0

    def after_pull(self, n: int) -> Any:
        """Told how many samples a pull brought; returns a replacement source's info, or None."""
        b, now = self.bridge, time.monotonic()
        if n:
            self.last = now
            if self.stalled:
                self.stalled = False
                b.state, b.error = "streaming", None
                log.info("LSL source %s sends again", self.info.name())
            return None
        if now - self.last < self.limit:
            return None
        if not self.stalled:
            self.stalled = True
            b.state = "stalled"
            b.error = (f"source '{self.info.name()}' has sent nothing for {self.limit:g} s; looking for another "
                       "source of the same name (still listening to this one)")
            b._count("stalls", 1, "stalls")
            log.warning("LSL %s", b.error)
        if now < self.next_look:
            return None
        other, _ = resolve(b.cfg, exclude_uid=self.info.uid(), timeout=0.2)
        self.next_look = time.monotonic() + 0.5
        if other is not None:
            log.warning("LSL: switching from the stalled source to %s on %s", other.name(), other.hostname())
            b._count("reconnects", 1, "reconnects")
        return other


class RateWatch:
    """A regular source's rate measured from its own time stamps, against its nominal rate. Bins are the nominal
    rate's: a source declared at 50 Hz that sends 500 samples a second (or 5) would be decoded as ten times as many
    (or a tenth as many) 20-ms bins. The rate is measured over ``window_s`` of stamps or ``window_s`` worth of
    declared samples, whichever comes first; while it is off the nominal
    by more than ``tolerance`` (a share) the source is refused — its samples dropped (reason "rate") and /health
    and ``alignnet_lsl_rate_mismatch`` say so — and it is taken again when a window measures right."""

    def __init__(self, bridge, nominal: float, tolerance: float, window_s: float = 2.0, speed: float = 1.0) -> None:
        self.bridge, self.tolerance, self.window_s, self.speed = bridge, tolerance, window_s, speed
        self.nominal = float(nominal) * speed  # a replay's declared speed-up is part of its declared rate
        self.n, self.t0, self.t1 = 0, np.inf, -np.inf
        self.measured: float | None = None
        self.off = False

    def status(self) -> dict[str, Any]:
        return {"nominal_hz": self.nominal, "measured_hz": self.measured, "tolerance": self.tolerance,
                "replay_speed": self.speed, "off": self.off}

    def observe(self, stamps: np.ndarray) -> bool:
        """Told each pull's stamps; True while the source is refused (its samples must be dropped)."""
        if len(stamps):
            self.n += len(stamps)
            self.t0, self.t1 = min(self.t0, float(stamps.min())), max(self.t1, float(stamps.max()))
        # The window closes on whichever comes first: window_s of stamps (a slow source) or window_s worth of
        # declared samples (a fast one, caught in a tenth of the time at 10x).
        span = self.t1 - self.t0
        if self.n > 1 and span > 0 and (span >= self.window_s or self.n >= self.window_s * self.nominal):
            self.measured = (self.n - 1) / (self.t1 - self.t0)
            self.n, self.t0, self.t1 = 0, np.inf, -np.inf
            self._judge()
        return self.off

    def _judge(self) -> None:
        b, off = self.bridge, abs(self.measured / self.nominal - 1) > self.tolerance
        for name, value in (("rate", self.measured), ("rate_mismatch", float(off))):
            if (m := b._metric(name)) is not None:
                m.set(value)
        if off and not self.off:
            b.state = "rate mismatch"
            sped = f" (replayed at {self.speed:g}x)" if self.speed != 1 else ""
            b.error = (f"source '{b.source['name']}' declares {self.nominal:g} Hz{sped} but its stamps run at "
                       f"{self.measured:.4g} Hz (more than {self.tolerance:.0%} off): refused, its samples dropped, "
                       "until it runs at its declared rate")
            log.warning("LSL %s", b.error)
        elif self.off and not off:
            b.state, b.error = "streaming", None
            log.info("LSL source %s runs at its declared rate again", b.source["name"])
        self.off = off


# ---- clean-up and re-binning: pure numpy, tested without LSL (no maintained library does these few lines for a
# live stream) ----
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


def sanitize(x: np.ndarray, counts: bool, last: np.ndarray | None = None,
             most: float = np.inf) -> tuple[np.ndarray, int]:
    """Replace bad values so one bad sample cannot poison a window: non-finite ones, and for counts negative,
    fractional, or above ``most`` (a count no channel fires in one sample's time: see ``max_count``). Counts become
    0, behavior holds the last good value. Returns (clean array, number of samples that had a bad value)."""
    bad = ~np.isfinite(x)
    if counts:
        with np.errstate(invalid="ignore"):
            bad |= (x < 0) | (x > most) | (x != np.round(x))
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
