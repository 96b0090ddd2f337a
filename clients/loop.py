"""The closed loop: a virtual subject drives a cursor through the live service.

The loop, every bin (20 ms), in real time:
1. read the decoded positions the service pushed on ``<source>-decoded`` (the cursor) and time each one against
   the input stamp it carries (decode latency, end to end through LSL and the bridge);
2. the task (center-out: a target, hold, timeout, return to the center) scores the cursor;
3. the virtual subject, who sees the cursor, updates its intended movement toward the target (a feedback
   controller with a speed limit and motor noise) and plans ahead by the neural lead;
4. its motor cortex (the foundation simulator's tuning model, on a day the model never trained on) fires spikes
   for that plan: 1-ms counts for 64 channels, pushed over LSL at 1 kHz (the bridge re-bins them).

``closed_loop`` starts ``alignnet serve --lsl`` with the chosen artifact and yields the loop. The demo
(``alignnet.clients.demo``: headless runs and the web page) and the live calibration
(``alignnet.clients.recalibrate``) both build on it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from alignnet.bench.load import served_contract
from alignnet.recordings.dynamics import CortexState
from alignnet.recordings.simulator import BEHAVIOR_FS, SimConfig, drift_population, initial_population, unit_rates
from alignnet.service.http.launcher import ServiceUnavailable, free_port, serving
from alignnet.service.http.settings import DEFAULT_MODELS
from alignnet.service.live.consumer import DecodedStream

log = logging.getLogger(__name__)

DECODERS = {"alignnet": DEFAULT_MODELS / "alignnet-quick", "wiener": DEFAULT_MODELS / "wiener-quick"}


@dataclass
class TaskParams:
    n_targets: int = 8  # center-out targets on a circle
    radius: float = 0.8  # target distance from the center (joystick units)
    accept: float = 0.25  # acceptance radius around the target and the center
    hold_s: float = 0.2  # time the cursor must stay inside a target to hit it
    timeout_s: float = 4.0  # a reach that takes longer is a miss
    center_hold_s: float = 0.3  # hold at the center before the next target
    center_timeout_s: float = 3.0  # the next target comes anyway after this long


@dataclass
class SubjectParams:
    gain: float = 5.0  # intended velocity = gain x (goal - seen cursor), per second
    max_speed: float = 2.0  # joystick units/s
    motor_noise: float = 0.05  # std of the intended velocity's noise (units/s)
    limit: float = 1.5  # the intended position stays within +/- limit


def population_on_day(cfg: SimConfig, day: int):
    """The simulated population of recording day ``day``, exactly as ``simulate_days`` draws it (day >= n_days
    continues the drift past the recorded days)."""
    root = np.random.SeedSequence(cfg.seed)
    pop_seq = root.spawn(cfg.n_days + 1)[0]  # spawn keys do not depend on n: child 0 is the population's
    rng = np.random.default_rng(pop_seq)
    pop = initial_population(rng, cfg.neural, cfg.dynamics)
    for _ in range(day):
        pop = drift_population(pop, rng, cfg.neural, cfg.drift, cfg.dynamics)
    return pop


class Subject:
    """Intends a movement from what it sees and fires spikes for it (per ms), one bin at a time."""

    def __init__(self, population, cfg: SimConfig, params: SubjectParams, seed: int = 0) -> None:
        self.pop, self.neural, self.p = population, cfg.neural, params
        self.rng = np.random.default_rng(seed)
        self.lead = int(round((self.neural.lead_s + cfg.dynamics.lookahead_s) * BEHAVIOR_FS))
        # the latent dynamics, trial gains and within-day drift of the simulator's setting, carried bin to bin
        self.state = CortexState(cfg.dynamics, population.system, self.neural.n_channels,
                                 np.random.default_rng([seed, 1])) if cfg.dynamics.stateful else None
        self.pos = np.zeros(2)
        self.vel = np.zeros(2)
        self.history = np.zeros((200, 2))  # the last 200 ms of intended positions

    def step(self, seen_cursor: np.ndarray, goal: np.ndarray, n_ms: int) -> np.ndarray:
        """Update the intention from the cursor it sees; return (n_ms, C) spike counts for the next n_ms."""
        want = self.p.gain * (goal - seen_cursor) + self.p.motor_noise * self.rng.standard_normal(2)
        speed = np.linalg.norm(want)
        self.vel = want * min(1.0, self.p.max_speed / max(speed, 1e-9))
        steps = np.arange(1, n_ms + self.lead + 1)[:, None] / BEHAVIOR_FS
        plan = np.clip(self.pos + self.vel * steps, -self.p.limit, self.p.limit)  # this bin, then the lead
        traj = np.concatenate([self.history, plan])
        rates = unit_rates(self.pop, self.neural, traj, self.state,
                           rows=slice(len(self.history), len(self.history) + n_ms))
        spikes = (self.rng.random(rates.shape) < -np.expm1(-rates / BEHAVIOR_FS)).astype(np.float32)
        self.pos = plan[n_ms - 1]
        self.history = np.concatenate([self.history[n_ms:], plan[:n_ms]])
        return spikes


class CenterOut:
    """Center-out task scored on the cursor: targets in a seeded random order, a hold to hit, a timeout."""

    def __init__(self, params: TaskParams, seed: int = 0) -> None:
        self.p = params
        angles = 2 * np.pi * np.arange(params.n_targets) / params.n_targets
        self.targets = params.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        self.rng = np.random.default_rng(seed)
        self.phase = "center"
        self.target = -1
        self.t_phase = 0.0
        self.t_inside: float | None = None
        self.hits, self.misses = 0, 0
        self.times: list[float] = []
        self.outcomes: list[tuple[bool, float | None]] = []  # per trial: hit?, time to target
        self.last_result: str | None = None

    @property
    def goal(self) -> np.ndarray:
        return np.zeros(2) if self.phase == "center" else self.targets[self.target]

    @property
    def trials(self) -> int:
        return self.hits + self.misses

    def update(self, cursor: np.ndarray, t: float) -> None:
        inside = np.linalg.norm(cursor - self.goal) <= self.p.accept
        if inside and self.t_inside is None:
            self.t_inside = t
        elif not inside:
            self.t_inside = None
        held = self.t_inside is not None and t - self.t_inside >= (
            self.p.center_hold_s if self.phase == "center" else self.p.hold_s)
        if self.phase == "center":
            if held or t - self.t_phase >= self.p.center_timeout_s:
                self.phase, self.target, self.t_phase, self.t_inside = "reach", int(self.rng.integers(
                    self.p.n_targets)), t, None
        elif held:
            self.hits += 1
            self.times.append(self.t_inside - self.t_phase)  # time to target: onset -> entry that was held
            self.outcomes.append((True, self.times[-1]))
            self.last_result = "hit"
            self.phase, self.t_phase, self.t_inside = "center", t, None
        elif t - self.t_phase >= self.p.timeout_s:
            self.misses += 1
            self.outcomes.append((False, None))
            self.last_result = "miss"
            self.phase, self.t_phase, self.t_inside = "center", t, None


class ClosedLoop:
    """The real-time loop (a thread): subject -> LSL spikes -> service -> LSL decoded cursor -> task -> subject.

    ``contract`` is the served model's (GET /model): its channel count must be the simulated population's, and its
    bin a whole number of the subject's 1-ms samples; the first window (plus 0.5 s) is warm-up at rest."""

    def __init__(self, source: str, contract: dict, day: int = 6, seed: int = 0, task: TaskParams | None = None,
                 subject: SubjectParams | None = None, sim: SimConfig | None = None) -> None:
        import pylsl

        self.pylsl = pylsl
        self.sim = sim or SimConfig()
        self.n_channels = self.sim.neural.n_channels
        if contract["n_channels"] != self.n_channels:
            raise ValueError(f"the served model reads {contract['n_channels']} channels; the demo's simulated "
                             f"population has {self.n_channels}: serve a model trained on simulated data")
        self.bin_ms = int(round(contract["bin_s"] * 1000))
        if self.bin_ms < 1 or abs(self.bin_ms - contract["bin_s"] * 1000) > 1e-6:
            raise ValueError(f"the served model's bin of {contract['bin_s'] * 1000:g} ms is not a whole number of "
                             "the subject's 1-ms samples")
        self.warmup_s = contract["window_bins"] * contract["bin_s"] + 0.5
        self.window_bins = int(contract["window_bins"])
        self.subject = Subject(population_on_day(self.sim, day), self.sim, subject or SubjectParams(), seed)
        self.task = CenterOut(task or TaskParams(), seed)
        self.source, self.day = source, day
        info = pylsl.StreamInfo(source, "Spikes", self.n_channels, 1000.0, "float32", source)
        info.desc().append_child_value("producer", "alignnet-demo virtual subject")
        self.outlet = pylsl.StreamOutlet(info, chunk_size=self.bin_ms)
        self.decoded: DecodedStream | None = None
        self.cursor = np.zeros(2)
        self.trail: list[list[float]] = []
        self.stop_event = threading.Event()
        self.recent: deque = deque(maxlen=int(120_000 / self.bin_ms))  # the last 2 min of binned spikes (C,)
        self.cursor_bins: deque = deque(maxlen=self.window_bins)  # the cursor at each of the last window's bins
        self.bins_total = 0  # bins pushed so far (recent[-1] is bin bins_total - 1)
        self.calibration: dict | None = None  # status of a live calibration (clients/recalibrate.py)
        self.error: str | None = None
        self._lock = threading.Lock()

    @property
    def latencies(self) -> list[float]:
        return self.decoded.latencies if self.decoded is not None else []

    def connect(self, timeout: float = 30.0) -> None:
        """Wait for the service's decoded stream (it appears once the bridge has found our spikes), streaming the
        subject at rest meanwhile."""
        end = time.monotonic() + timeout
        t_next = time.monotonic()
        while self.decoded is None:
            try:
                self.decoded = DecodedStream(f"{self.source}-decoded", timeout=0.5, hint=(
                    f"is `alignnet serve --lsl --lsl-source {self.source}` running?"))
            except ServiceUnavailable:
                if time.monotonic() > end:
                    raise
                t_next = self._push(np.zeros(2), t_next)  # keep streaming (rest) while the bridge connects

    def _push(self, goal: np.ndarray, t_next: float) -> float:
        spikes = self.subject.step(self.cursor, goal, self.bin_ms)
        with self._lock:  # read by the page's raster views
            self.recent.append(spikes.sum(axis=0))
            self.cursor_bins.append(self.cursor.copy())
            self.bins_total += 1
        now = self.pylsl.local_clock()
        stamps = now - (self.bin_ms - 1 - np.arange(self.bin_ms)) / 1000.0  # 1-ms samples ending now
        self.outlet.push_chunk(spikes, stamps.tolist())
        t_next += self.bin_ms / 1000.0
        if self.decoded is None:
            time.sleep(max(0.0, t_next - time.monotonic()))
        else:  # wait for decoded samples until the next bin is due
            self._receive(t_next)
        return t_next

    def _receive(self, until: float) -> None:
        """Take the decoded samples that arrive before ``until``; the newest is the cursor."""
        if self.decoded.receive(until):
            self.cursor = self.decoded.last

    def run(self, trials: int | None = None) -> None:
        """Run until ``trials`` are done (None: until stopped)."""
        try:
            if self.decoded is None:
                self.connect()
            t_next = time.monotonic()
            t0 = time.monotonic()
            self.latencies.clear()
            while not self.stop_event.is_set():
                self._receive(0.0)
                t = time.monotonic() - t0
                if t >= self.warmup_s:  # the first window fills with the subject resting at the center
                    self.task.update(self.cursor, t)
                else:
                    self.latencies.clear()
                with self._lock:
                    self.trail = (self.trail + [self.cursor.round(4).tolist()])[-25:]
                if trials is not None and self.task.trials >= trials:
                    break
                goal = self.task.goal if t >= self.warmup_s else np.zeros(2)
                t_next = self._push(goal, t_next)
        except Exception as e:  # shown on the page and raised by headless runs
            self.error = f"{type(e).__name__}: {e}"
            log.exception("closed loop stopped")
            raise

    def snapshot(self) -> dict:
        task = self.task
        lat = np.asarray(self.latencies[-500:]) * 1e3
        with self._lock:
            trail = list(self.trail)
        return {
            "cursor": self.cursor.round(4).tolist(), "trail": trail, "goal": task.goal.round(4).tolist(),
            "phase": task.phase, "target": task.target, "targets": task.targets.round(4).tolist(),
            "accept": task.p.accept, "hits": task.hits, "misses": task.misses, "trials": task.trials,
            "last_result": task.last_result,
            "time_to_target_s": round(task.times[-1], 3) if task.times else None,
            "mean_time_to_target_s": round(float(np.mean(task.times)), 3) if task.times else None,
            "latency_ms": {"last": round(float(lat[-1]), 2), "p50": round(float(np.percentile(lat, 50)), 2),
                           "p99": round(float(np.percentile(lat, 99)), 2)} if lat.size else None,
            "error": self.error, "calibration": self.calibration,
        }

    def summary(self) -> dict:
        task = self.task
        lat = np.asarray(self.latencies) * 1e3
        times = np.asarray(task.times)
        return {
            "trials": task.trials, "hits": task.hits, "misses": task.misses,
            "success_rate": round(task.hits / task.trials, 4) if task.trials else None,
            "mean_time_to_target_s": round(float(times.mean()), 3) if times.size else None,
            "median_time_to_target_s": round(float(np.median(times)), 3) if times.size else None,
            "decode_latency_ms": {"n": int(lat.size), **({k: round(float(np.percentile(lat, q)), 2) for k, q in
                                                          (("p50", 50), ("p90", 90), ("p99", 99))} if lat.size
                                                         else {})},
            "day": self.day, "task": asdict(task.p), "subject": asdict(self.subject.p),
        }


# ---- runs ---------------------------------------------------------------------------------------------------------
def resolve_decoder(name: str) -> Path:
    """'alignnet' or 'wiener' (the default models), or an artifact folder."""
    if name in DECODERS:
        return DECODERS[name]
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(f"decoder {name!r} is neither one of {', '.join(DECODERS)} nor an artifact folder")
    return path


def artifact_root(artifact: Path) -> Path:
    """The folder the demo's service may /reload from: one holding both the default models and ``artifact`` (the
    page's decoder selector switches among them; the demo's service listens on loopback only)."""
    import os

    return Path(os.path.commonpath([DEFAULT_MODELS.resolve(), Path(artifact).resolve().parent]))


@contextmanager
def closed_loop(artifact: Path, day: int, seed: int, engine: str, port: int | None = None):
    """Start `alignnet serve --lsl` on ``artifact`` bridging a fresh LSL stream name; yield (the loop, built on the
    served model's contract, and the service URL). The session's live calibrations go to a folder of its own, removed
    afterwards: a demo never changes what the artifact serves next time."""
    import tempfile

    source = f"alignnet-demo-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="alignnet-demo-") as cal:
        extra = ["--lsl", "--lsl-source", source, "--engine", engine, "--calibration-dir", cal]
        env = {"ALIGNNET_ARTIFACT_ROOT": str(artifact_root(artifact))}
        with serving(artifact, extra, port=port or free_port(), env=env) as url:
            loop = ClosedLoop(source, served_contract(url), day=day, seed=seed)
            try:
                yield loop, url
            finally:  # the loop's inlet closes before the service stops
                if loop.decoded is not None:
                    loop.decoded.close()
