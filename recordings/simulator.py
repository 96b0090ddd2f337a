"""Simulator of a macaque M1 population during an 8-target center-out joystick task, over many days.

This is the embedded default dataset (used when the user brings no data), the virtual subject of the closed-loop
demo and the fixture data of the tests. Written by hand because no maintained library simulates multi-day M1
recordings with drift; numpy/scipy do the numerics.

Model of one day:
- Trials: center hold, target onset, reaction time, reach with a minimum-jerk (bell-shaped speed) profile, hold at
  the target, return to the center, inter-trial interval. Joystick x, y sampled at 1 kHz with slow postural wander
  and sensor noise. Trials follow each other without gaps: a day is one continuous segment.
- 64 channels of multi-unit activity. Each channel carries 1-3 units; each unit has a baseline rate, cosine tuning
  to the direction of the velocity it will produce ~100 ms later (neural lead), a speed term and a position term.
  Some units are untuned. Spikes are Bernoulli per millisecond with a sub-millisecond offset on the 30 kHz grid and
  a 1-ms refractory period per channel.
- The default setting ("cortex", ``dynamics.py``) adds what makes real M1 harder to decode: a low-dimensional
  latent dynamical system (damped rotations) driven by the intended movement, trial-to-trial gain variability and
  input-independent latent noise, slow baseline drift within a day, and channels on a 2-D array. The setting
  "simple" is the simulator before those: rates an instantaneous function of kinematics, a 1-D electrode shift.
- Drift from one day to the next, each kind with its own magnitude: random walk of preferred directions (and of
  the latent loadings' phases), log-normal gain and baseline changes, units lost and new units appearing, and
  electrode shifts (each channel picks up a fraction of a neighbour's units). The ground truth of every day, true
  rates included, is returned so tests and scores can use it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from alignnet.recordings.dynamics import CortexState, DynamicsConfig, LatentSystem, grid_mixing
from alignnet.recordings.task import TaskConfig, simulate_kinematics

log = logging.getLogger(__name__)

SPIKE_FS = 30_000  # spike-time resolution (Hz)
BEHAVIOR_FS = 1_000  # joystick sampling rate (Hz)
SAMPLES_PER_MS = SPIKE_FS // BEHAVIOR_FS


@dataclass
class NeuralConfig:
    n_channels: int = 64  # electrodes of the array
    units_per_channel: tuple[int, int] = (1, 3)  # multi-unit activity: inclusive range of units per channel
    max_units_per_channel: int = 3  # slots per channel (free slots can gain new units on later days)
    baseline_hz: tuple[float, float] = (3.0, 20.0)  # per-unit baseline; channels sum to ~5-40 Hz
    depth: tuple[float, float] = (0.4, 1.0)  # cosine modulation depth relative to baseline
    speed_gain: tuple[float, float] = (0.0, 0.5)  # speed term relative to baseline
    position_gain: tuple[float, float] = (0.2, 0.7)  # position term relative to baseline
    untuned_fraction: float = 0.15  # units with no kinematic tuning
    lead_s: float = 0.1  # neural activity leads movement by this much
    peak_speed: float = 4.0  # joystick units/s that map to full modulation
    noise_floor_hz: float = 1.0  # background rate of every channel
    max_rate_hz: float = 200.0
    refractory_ms: int = 1  # per-channel dead time


@dataclass
class DriftConfig:
    pd_deg: float = 12.0  # std of the day-to-day random walk of preferred directions (degrees)
    gain_log_std: float = 0.10  # std of the day-to-day log change of modulation depth
    baseline_log_std: float = 0.10  # std of the day-to-day log change of baseline rates
    unit_loss: float = 0.05  # probability that a unit disappears from one day to the next
    unit_gain: float = 0.05  # probability that an empty slot gains a new unit
    shift_std: float = 0.05  # std of the day-to-day random walk of the electrode shift (fraction of a pitch)
    shift_max: float = 0.5  # the shift is clipped to +/- this fraction


@dataclass
class SimConfig:
    n_days: int = 6  # recording days
    trials_per_day: int = 200  # trials per day (an int, or a total spread over days via paper_scale())
    seed: int = 0  # everything is a deterministic function of the seed
    subject: str = "sim-monkey"
    task: TaskConfig = field(default_factory=TaskConfig)
    neural: NeuralConfig = field(default_factory=NeuralConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)  # setting "cortex" (default) or "simple"

    def __post_init__(self) -> None:
        if self.n_days < 1:
            raise ValueError(f"n_days must be >= 1, got {self.n_days}")
        if self.trials_per_day < 1:
            raise ValueError(f"trials_per_day must be >= 1, got {self.trials_per_day}")
        if self.neural.n_channels < 1:
            raise ValueError(f"n_channels must be >= 1, got {self.neural.n_channels}")

    @classmethod
    def paper_scale(cls, seed: int = 0) -> SimConfig:
        """22 days of 1,459 trials: the paper's 32,083 trials split evenly, rounded up (32,098)."""
        return cls(n_days=22, trials_per_day=32_083 // 22 + 1, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimConfig:
        d = dict(d)
        task = TaskConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("task", {}).items()})
        neural = NeuralConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("neural", {}).items()})
        drift = DriftConfig(**d.pop("drift", {}))
        # datasets simulated before the setting existed carry no "dynamics": they were the simple setting
        dyn = d.pop("dynamics", {"setting": "simple"})
        dyn = {**DynamicsConfig.named(dyn.get("setting", "cortex")).__dict__, **dyn}
        dynamics = DynamicsConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in dyn.items()})
        return cls(task=task, neural=neural, drift=drift, dynamics=dynamics, **d)


@dataclass
class UnitPopulation:
    """Ground truth of one day: every unit slot of every channel (arrays are (C, U))."""

    active: np.ndarray  # bool
    baseline: np.ndarray  # Hz
    depth: np.ndarray  # relative modulation depth
    pd: np.ndarray  # preferred direction (radians)
    speed: np.ndarray  # relative speed gain
    pos_gain: np.ndarray  # relative position gain
    pos_dir: np.ndarray  # preferred position direction (radians)
    latent: np.ndarray | None = None  # (C, U, K) complex loadings on the latent planes (None: no latent system)
    shift: float = 0.0  # electrode shift (fraction of a pitch, sign = direction along the array; x on a grid)
    shift_y: float = 0.0  # electrode shift along the grid's other axis
    layout: str = "line"  # line | grid
    system: LatentSystem | None = None  # the latent planes (fixed across days)

    def copy(self) -> UnitPopulation:
        return UnitPopulation(**{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()})

    def channel_latent(self) -> np.ndarray | None:
        """(C, K) complex: each home channel's loading on the latent planes (Hz per unit of latent)."""
        if self.latent is None:
            return None
        return ((self.active * self.baseline)[..., None] * self.latent).sum(axis=1)

    def channel_pd(self) -> np.ndarray:
        """(C,) effective preferred direction of each channel (vector sum of its units, after the shift)."""
        vec = (self.active * self.baseline * self.depth)[..., None] * np.stack(
            [np.cos(self.pd), np.sin(self.pd)], axis=-1
        )
        if self.latent is not None and self.system is not None:
            # the latent planes' steady-state response to velocity u is Re(loading * gain * u): a cosine tuning
            # of depth |loading| toward -arg(loading * gain)
            lg = (self.latent * self.system.gains).sum(axis=-1)  # (C, U) complex
            vec = vec + (self.active * self.baseline)[..., None] * np.stack([lg.real, -lg.imag], axis=-1)
        per_channel = self.mixing() @ vec.sum(axis=1)
        return np.arctan2(per_channel[:, 1], per_channel[:, 0])

    def mixing(self) -> np.ndarray:
        """(C, C) matrix mapping units' home channel to recorded channel (electrode shift)."""
        n = self.active.shape[0]
        if self.layout == "grid":
            return grid_mixing(n, self.shift, self.shift_y)
        a = abs(self.shift)
        m = (1.0 - a) * np.eye(n)
        if a > 0:
            m += a * np.roll(np.eye(n), 1 if self.shift > 0 else -1, axis=1)
        return m


@dataclass
class SimDay:
    """One simulated day. Times are on the 1-kHz grid; spikes are (sample index at 30 kHz, channel)."""

    index: int
    behavior: np.ndarray  # (n_ms, 2) joystick x, y at 1 kHz
    spike_samples: np.ndarray  # (n_spikes,) int64 spike times as 30-kHz sample indices, sorted by channel then time
    spike_channels: np.ndarray  # (n_spikes,) int16
    trial_start_ms: np.ndarray  # (n_trials,) start of each trial on the 1-kHz grid
    target_onset_ms: np.ndarray  # (n_trials,)
    target: np.ndarray  # (n_trials,) target index 0..7
    population: UnitPopulation
    n_channels: int
    rates_hz: np.ndarray | None = None  # (n_ms, C) the true rates the spikes were drawn from

    @property
    def duration_s(self) -> float:
        return self.behavior.shape[0] / BEHAVIOR_FS

    @property
    def n_trials(self) -> int:
        return int(self.trial_start_ms.size)

    def spike_times_s(self) -> np.ndarray:
        return self.spike_samples / SPIKE_FS


# ---------------------------------------------------------------------------------------------------------------
def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float], size=None) -> np.ndarray:
    return rng.uniform(lo_hi[0], lo_hi[1], size)


def new_unit_params(rng: np.random.Generator, cfg: NeuralConfig, shape: tuple[int, ...],
                    dyn: DynamicsConfig | None = None) -> dict[str, np.ndarray]:
    tuned = rng.random(shape) >= cfg.untuned_fraction
    extra = {}
    if dyn is not None and dyn.latent_planes > 0:
        k = dyn.latent_planes
        weight = _uniform(rng, dyn.latent_weight, (*shape, k)) / np.sqrt(k) * tuned[..., None]
        extra["latent"] = weight * np.exp(1j * rng.uniform(-np.pi, np.pi, (*shape, k)))
    return dict(**extra,
        baseline=_uniform(rng, cfg.baseline_hz, shape),
        depth=_uniform(rng, cfg.depth, shape) * tuned,
        pd=rng.uniform(-np.pi, np.pi, shape),
        speed=_uniform(rng, cfg.speed_gain, shape) * tuned,
        pos_gain=_uniform(rng, cfg.position_gain, shape) * tuned,
        pos_dir=rng.uniform(-np.pi, np.pi, shape),
    )


def initial_population(rng: np.random.Generator, cfg: NeuralConfig,
                       dyn: DynamicsConfig | None = None) -> UnitPopulation:
    shape = (cfg.n_channels, cfg.max_units_per_channel)
    n_units = rng.integers(cfg.units_per_channel[0], cfg.units_per_channel[1] + 1, cfg.n_channels)
    active = np.arange(cfg.max_units_per_channel)[None, :] < n_units[:, None]
    pop = UnitPopulation(active=active, **new_unit_params(rng, cfg, shape, dyn))
    if dyn is not None:
        pop.layout = dyn.array
        if dyn.latent_planes > 0:
            pop.system = LatentSystem.draw(rng, dyn)
    return pop


def drift_population(
    pop: UnitPopulation, rng: np.random.Generator, cfg: NeuralConfig, drift: DriftConfig,
    dyn: DynamicsConfig | None = None,
) -> UnitPopulation:
    """Next day's population from this day's."""
    new = pop.copy()
    shape = pop.active.shape
    step = np.deg2rad(drift.pd_deg) * rng.standard_normal(shape)
    new.pd = np.angle(np.exp(1j * (pop.pd + step)))
    if pop.latent is not None:
        # a unit's latent loadings turn with its preferred direction: the steady-state response to velocity u is
        # Re(loading * gain * u), whose preferred direction is -arg(loading * gain), hence the minus sign
        new.latent = pop.latent * np.exp(-1j * step)[..., None]
    new.depth = pop.depth * np.exp(drift.gain_log_std * rng.standard_normal(shape))
    new.baseline = pop.baseline * np.exp(drift.baseline_log_std * rng.standard_normal(shape))
    lost = pop.active & (rng.random(shape) < drift.unit_loss)
    gained = ~pop.active & (rng.random(shape) < drift.unit_gain)
    fresh = new_unit_params(rng, cfg, shape, dyn if pop.latent is not None else None)
    for k, v in fresh.items():
        getattr(new, k)[gained] = v[gained]
    new.active = (pop.active & ~lost) | gained
    new.shift = float(np.clip(pop.shift + drift.shift_std * rng.standard_normal(), -drift.shift_max, drift.shift_max))
    if pop.layout == "grid":
        new.shift_y = float(np.clip(pop.shift_y + drift.shift_std * rng.standard_normal(), -drift.shift_max,
                                    drift.shift_max))
    return new


def unit_rates(pop: UnitPopulation, cfg: NeuralConfig, behavior: np.ndarray, state: CortexState | None = None,
               rows: slice = slice(None), trial_starts: np.ndarray | None = None) -> np.ndarray:
    """(n, C) firing rates (Hz) of each recorded channel for ``behavior[rows]``, given the joystick trajectory
    (n_ms, 2) around them (the rows after ``rows`` are the plan the neurons lead by).

    A stateful setting passes its ``CortexState`` (advanced by exactly these rows) and, where known, the indices
    inside ``rows`` where trials start."""
    lead = int(round(cfg.lead_s * BEHAVIOR_FS))
    vel = np.gradient(behavior, 1.0 / BEHAVIOR_FS, axis=0)
    vel = gaussian_filter1d(vel, sigma=10, axis=0)  # differentiate then smooth: motor commands are smooth
    # neural activity at time t reflects the movement at t + lead
    vel_lead = _ahead(vel, lead)[rows]
    pos_lead = _ahead(behavior, lead)[rows]
    v = vel_lead / cfg.peak_speed
    speed = np.linalg.norm(v, axis=1, keepdims=True)
    # per unit: baseline * (1 + depth * v.pd + speed * |v| + pos_gain * p.pos_dir), summed per home channel:
    # one (n_ms, 6) x (6, C) product of kinematic features and per-channel weights
    features = np.concatenate([np.ones_like(speed), v, speed, pos_lead], axis=1).astype(np.float32)
    w = pop.active * pop.baseline  # (C, U)
    weights = np.stack([
        w.sum(1),
        (w * pop.depth * np.cos(pop.pd)).sum(1),
        (w * pop.depth * np.sin(pop.pd)).sum(1),
        (w * pop.speed).sum(1),
        (w * pop.pos_gain * np.cos(pop.pos_dir)).sum(1),
        (w * pop.pos_gain * np.sin(pop.pos_dir)).sum(1),
    ]).astype(np.float32)
    if state is None:
        home = features @ weights
    else:
        ahead = lead + int(round(state.cfg.lookahead_s * BEHAVIOR_FS))
        drive = _ahead(vel, ahead)[rows] / cfg.peak_speed
        latent, drift, gain = state.advance(drive[:, 0] + 1j * drive[:, 1], trial_starts)
        modulation = features[:, 1:] @ weights[1:]
        loadings = pop.channel_latent()
        if loadings is not None:
            modulation = modulation + (latent @ loadings.T).real
        home = (weights[0] * np.exp(drift) + gain * modulation).astype(np.float32)
    # unit rates are rectified individually in a real population; rectifying the channel sum is close enough
    # for multi-unit activity and keeps this two matrix products. The electrode shift mixes home channels.
    rates = np.clip(home, 0.0, None) @ pop.mixing().T.astype(np.float32) + cfg.noise_floor_hz
    return np.minimum(rates, cfg.max_rate_hz)


def _ahead(x: np.ndarray, k: int) -> np.ndarray:
    """x shifted k samples earlier in time (x[t + k] at t), the last sample repeated at the end."""
    return np.concatenate([x[k:], np.repeat(x[-1:], min(k, len(x)), axis=0)]) if k > 0 else x


def sample_spikes(rng: np.random.Generator, rates_hz: np.ndarray, refractory_ms: int, t0_ms: int = 0):
    """Spikes from (n_ms, C) rates: Bernoulli per ms, a random sub-ms offset on the 30-kHz grid, and a dead time.

    Returns (sample index at 30 kHz, channel), sorted by channel then time."""
    p = -np.expm1(-rates_hz.astype(np.float32) / BEHAVIOR_FS)
    hit = rng.random(rates_hz.shape, dtype=np.float32) < p
    ms, ch = np.nonzero(hit.T)[::-1]  # nonzero of the transpose: sorted by channel, then time
    samples = (ms.astype(np.int64) + t0_ms) * SAMPLES_PER_MS + rng.integers(0, SAMPLES_PER_MS, ms.size)
    if refractory_ms > 0 and samples.size > 1:
        dead = refractory_ms * SAMPLES_PER_MS
        keep = np.ones(samples.size, bool)
        same = ch[1:] == ch[:-1]
        # one pass against the previous spike: enough at M1 rates, where triplets inside 2 ms are vanishingly rare
        keep[1:] = ~(same & (samples[1:] - samples[:-1] < dead))
        samples, ch = samples[keep], ch[keep]
    return samples, ch.astype(np.int16)


def simulate_day(
    pop: UnitPopulation, cfg: SimConfig, n_trials: int, rng: np.random.Generator, index: int = 0,
    chunk_ms: int = 200_000,
) -> SimDay:
    behavior, starts, onsets, targets = simulate_kinematics(rng, cfg.task, n_trials)
    state = CortexState(cfg.dynamics, pop.system, cfg.neural.n_channels, rng) if cfg.dynamics.stateful else None
    rates = unit_rates(pop, cfg.neural, behavior, state, trial_starts=starts)
    samples, chans = [], []
    for t0 in range(0, rates.shape[0], chunk_ms):  # chunks bound the memory of the Bernoulli draws
        s, c = sample_spikes(rng, rates[t0:t0 + chunk_ms], cfg.neural.refractory_ms, t0)
        samples.append(s)
        chans.append(c)
    samples, chans = np.concatenate(samples), np.concatenate(chans)
    order = np.lexsort((samples, chans))
    return SimDay(
        index=index, behavior=behavior.astype(np.float32), spike_samples=samples[order],
        spike_channels=chans[order], trial_start_ms=starts, target_onset_ms=onsets, target=targets,
        population=pop, n_channels=cfg.neural.n_channels, rates_hz=rates,
    )


def day_plans(cfg: SimConfig):
    """Yield (day index, population, the day's seed) for each day, deterministically from cfg.seed. The populations
    drift one day to the next (cheap, in order); each day's trials and spikes depend only on its population and
    seed, so days can be simulated in any order or in parallel with the same result."""
    root = np.random.SeedSequence(cfg.seed)
    pop_seq, *day_seqs = root.spawn(cfg.n_days + 1)
    pop_rng = np.random.default_rng(pop_seq)
    pop = initial_population(pop_rng, cfg.neural, cfg.dynamics)
    for d in range(cfg.n_days):
        if d > 0:
            pop = drift_population(pop, pop_rng, cfg.neural, cfg.drift, cfg.dynamics)
        yield d, pop, day_seqs[d]


def simulate_days(cfg: SimConfig, progress: bool = False):
    """Yield SimDay for each day of the recording, deterministically from cfg.seed."""
    from tqdm.auto import tqdm

    for d, pop, seq in tqdm(day_plans(cfg), total=cfg.n_days, desc="simulating days", unit="day",
                            disable=not progress):
        yield simulate_day(pop, cfg, cfg.trials_per_day, np.random.default_rng(seq), index=d)
