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
- Drift from one day to the next, each kind with its own magnitude: random walk of preferred directions, log-normal
  gain and baseline changes, units lost and new units appearing, and electrode shifts (each channel picks up a
  fraction of a neighbour's units). The ground truth of every day is returned so tests can check the drift.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

log = logging.getLogger(__name__)

SPIKE_FS = 30_000  # spike-time resolution (Hz)
BEHAVIOR_FS = 1_000  # joystick sampling rate (Hz)
SAMPLES_PER_MS = SPIKE_FS // BEHAVIOR_FS


@dataclass
class TaskConfig:
    n_targets: int = 8  # targets evenly spaced on a circle
    target_radius: float = 1.0  # joystick units (full deflection = 1)
    center_hold_s: tuple[float, float] = (0.3, 0.5)  # uniform range of the center hold before target onset
    reaction_s: tuple[float, float] = (0.15, 0.30)  # reaction time range
    reach_s: tuple[float, float] = (0.35, 0.60)  # reach duration range (minimum-jerk profile)
    target_hold_s: tuple[float, float] = (0.3, 0.5)  # hold at the target
    return_s: tuple[float, float] = (0.4, 0.6)  # return to the center
    iti_s: tuple[float, float] = (0.1, 0.3)  # inter-trial interval at the center
    endpoint_jitter: float = 0.06  # std of the reach endpoint around the target (joystick units)
    wander: float = 0.01  # std of slow postural wander (joystick units)
    sensor_noise: float = 0.003  # std of white sensor noise on the 1-kHz joystick samples


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

    def __post_init__(self) -> None:
        if self.n_days < 1:
            raise ValueError(f"n_days must be >= 1, got {self.n_days}")
        if self.trials_per_day < 1:
            raise ValueError(f"trials_per_day must be >= 1, got {self.trials_per_day}")
        if self.neural.n_channels < 1:
            raise ValueError(f"n_channels must be >= 1, got {self.neural.n_channels}")

    @classmethod
    def paper_scale(cls, seed: int = 0) -> SimConfig:
        """22 days and 32,083 trials, as in the paper (trials split as evenly as possible)."""
        return cls(n_days=22, trials_per_day=32_083 // 22 + 1, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimConfig:
        d = dict(d)
        task = TaskConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("task", {}).items()})
        neural = NeuralConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("neural", {}).items()})
        drift = DriftConfig(**d.pop("drift", {}))
        return cls(task=task, neural=neural, drift=drift, **d)


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
    shift: float = 0.0  # electrode shift (fraction of a pitch, sign = direction along the array)

    def copy(self) -> UnitPopulation:
        return UnitPopulation(**{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()})

    def channel_pd(self) -> np.ndarray:
        """(C,) effective preferred direction of each channel (vector sum of its units, after the shift)."""
        vec = (self.active * self.baseline * self.depth)[..., None] * np.stack(
            [np.cos(self.pd), np.sin(self.pd)], axis=-1
        )
        per_channel = self.mixing() @ vec.sum(axis=1)
        return np.arctan2(per_channel[:, 1], per_channel[:, 0])

    def mixing(self) -> np.ndarray:
        """(C, C) matrix mapping units' home channel to recorded channel (electrode shift)."""
        n = self.active.shape[0]
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


def _min_jerk(n: int) -> np.ndarray:
    """Minimum-jerk position profile from 0 to 1 over n samples (bell-shaped speed)."""
    s = np.linspace(0.0, 1.0, n)
    return 10 * s**3 - 15 * s**4 + 6 * s**5


def new_unit_params(rng: np.random.Generator, cfg: NeuralConfig, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    tuned = rng.random(shape) >= cfg.untuned_fraction
    return dict(
        baseline=_uniform(rng, cfg.baseline_hz, shape),
        depth=_uniform(rng, cfg.depth, shape) * tuned,
        pd=rng.uniform(-np.pi, np.pi, shape),
        speed=_uniform(rng, cfg.speed_gain, shape) * tuned,
        pos_gain=_uniform(rng, cfg.position_gain, shape) * tuned,
        pos_dir=rng.uniform(-np.pi, np.pi, shape),
    )


def initial_population(rng: np.random.Generator, cfg: NeuralConfig) -> UnitPopulation:
    shape = (cfg.n_channels, cfg.max_units_per_channel)
    n_units = rng.integers(cfg.units_per_channel[0], cfg.units_per_channel[1] + 1, cfg.n_channels)
    active = np.arange(cfg.max_units_per_channel)[None, :] < n_units[:, None]
    return UnitPopulation(active=active, **new_unit_params(rng, cfg, shape))


def drift_population(
    pop: UnitPopulation, rng: np.random.Generator, cfg: NeuralConfig, drift: DriftConfig
) -> UnitPopulation:
    """Next day's population from this day's."""
    new = pop.copy()
    shape = pop.active.shape
    new.pd = np.angle(np.exp(1j * (pop.pd + np.deg2rad(drift.pd_deg) * rng.standard_normal(shape))))
    new.depth = pop.depth * np.exp(drift.gain_log_std * rng.standard_normal(shape))
    new.baseline = pop.baseline * np.exp(drift.baseline_log_std * rng.standard_normal(shape))
    lost = pop.active & (rng.random(shape) < drift.unit_loss)
    gained = ~pop.active & (rng.random(shape) < drift.unit_gain)
    fresh = new_unit_params(rng, cfg, shape)
    for k, v in fresh.items():
        getattr(new, k)[gained] = v[gained]
    new.active = (pop.active & ~lost) | gained
    new.shift = float(np.clip(pop.shift + drift.shift_std * rng.standard_normal(), -drift.shift_max, drift.shift_max))
    return new


def simulate_kinematics(rng: np.random.Generator, task: TaskConfig, n_trials: int):
    """Joystick trajectory of a block of trials at 1 kHz.

    Returns behavior (n_ms, 2), trial_start_ms (n_trials,), target_onset_ms (n_trials,), target (n_trials,)."""
    angles = 2 * np.pi * np.arange(task.n_targets) / task.n_targets
    pieces, starts, onsets = [], [], []
    targets = rng.integers(0, task.n_targets, n_trials)
    t = 0
    for k in range(n_trials):
        dur = {name: max(1, int(round(1000 * _uniform(rng, getattr(task, name))))) for name in
               ("center_hold_s", "reaction_s", "reach_s", "target_hold_s", "return_s", "iti_s")}
        goal = task.target_radius * np.array([np.cos(angles[targets[k]]), np.sin(angles[targets[k]])])
        goal = goal + task.endpoint_jitter * rng.standard_normal(2)
        hold_c = np.zeros((dur["center_hold_s"] + dur["reaction_s"], 2))
        reach = _min_jerk(dur["reach_s"])[:, None] * goal[None, :]
        hold_t = np.repeat(goal[None, :], dur["target_hold_s"], axis=0)
        ret = (1 - _min_jerk(dur["return_s"]))[:, None] * goal[None, :]
        iti = np.zeros((dur["iti_s"], 2))
        trial = np.concatenate([hold_c, reach, hold_t, ret, iti])
        starts.append(t)
        onsets.append(t + dur["center_hold_s"])
        pieces.append(trial)
        t += trial.shape[0]
    behavior = np.concatenate(pieces)
    n = behavior.shape[0]
    # slow postural wander (low-passed noise, ~2 Hz) and white sensor noise
    wander = gaussian_filter1d(rng.standard_normal((n, 2)), sigma=80, axis=0)
    wander *= task.wander / max(wander.std(), 1e-12)
    behavior = behavior + wander + task.sensor_noise * rng.standard_normal((n, 2))
    return behavior, np.asarray(starts), np.asarray(onsets), targets


def unit_rates(pop: UnitPopulation, cfg: NeuralConfig, behavior: np.ndarray) -> np.ndarray:
    """(n_ms, C) firing rates (Hz) of each recorded channel, given the joystick trajectory (n_ms, 2)."""
    lead = int(round(cfg.lead_s * BEHAVIOR_FS))
    vel = np.gradient(behavior, 1.0 / BEHAVIOR_FS, axis=0)
    vel = gaussian_filter1d(vel, sigma=10, axis=0)  # differentiate then smooth: motor commands are smooth
    # neural activity at time t reflects the movement at t + lead
    vel_lead = np.concatenate([vel[lead:], np.repeat(vel[-1:], lead, axis=0)])
    pos_lead = np.concatenate([behavior[lead:], np.repeat(behavior[-1:], lead, axis=0)])
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
    home = features @ weights
    # unit rates are rectified individually in a real population; rectifying the channel sum is close enough
    # for multi-unit activity and keeps this two matrix products. The electrode shift mixes home channels.
    rates = np.clip(home, 0.0, None) @ pop.mixing().T.astype(np.float32) + cfg.noise_floor_hz
    return np.minimum(rates, cfg.max_rate_hz)


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
    rates = unit_rates(pop, cfg.neural, behavior)
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
        population=pop, n_channels=cfg.neural.n_channels,
    )


def simulate_days(cfg: SimConfig, progress: bool = False):
    """Yield SimDay for each day of the recording, deterministically from cfg.seed."""
    from tqdm.auto import tqdm

    root = np.random.SeedSequence(cfg.seed)
    pop_seq, *day_seqs = root.spawn(cfg.n_days + 1)
    pop_rng = np.random.default_rng(pop_seq)
    pop = initial_population(pop_rng, cfg.neural)
    for d in tqdm(range(cfg.n_days), desc="simulating days", unit="day", disable=not progress):
        if d > 0:
            pop = drift_population(pop, pop_rng, cfg.neural, cfg.drift)
        yield simulate_day(pop, cfg, cfg.trials_per_day, np.random.default_rng(day_seqs[d]), index=d)


class VirtualSubject:
    """A simulated subject that produces spikes for a movement it intends, one chunk at a time.

    Used by the closed-loop demo: the subject's intended velocity (toward the target, given the cursor it sees) is
    turned into spikes with the same tuning model as the recorded days."""

    def __init__(self, population: UnitPopulation, cfg: NeuralConfig, seed: int = 0) -> None:
        self.population = population
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)

    def spikes_for(self, intended_behavior: np.ndarray) -> np.ndarray:
        """(n_ms, 2) intended joystick positions -> (n_ms, C) spike counts per ms."""
        rates = unit_rates(self.population, self.cfg, intended_behavior)
        p = -np.expm1(-rates / BEHAVIOR_FS)
        return (self.rng.random(rates.shape) < p).astype(np.int16)


# ---- broadband -------------------------------------------------------------------------------------------------
def spike_template(fs: float = SPIKE_FS) -> tuple[np.ndarray, int]:
    """A biphasic extracellular waveform (trough then a smaller, slower peak), trough = -1.

    Returns (waveform, index of the trough)."""
    t = np.arange(-0.4e-3, 1.2e-3, 1.0 / fs)
    w = -np.exp(-0.5 * (t / 0.12e-3) ** 2) + 0.35 * np.exp(-0.5 * ((t - 0.45e-3) / 0.25e-3) ** 2)
    w = w / -w.min()
    return w, int(np.argmin(w))


def simulate_broadband(
    spike_samples: np.ndarray, spike_channels: np.ndarray, n_channels: int, n_samples: int, snr: float = 6.0,
    noise_uv: float = 10.0, seed: int = 0,
) -> np.ndarray:
    """(n_samples, C) float32 broadband at 30 kHz (µV): each spike is the template with trough amplitude
    ``snr * noise_uv``, in white noise of std ``noise_uv`` plus a slow local field potential."""
    rng = np.random.default_rng(seed)
    x = noise_uv * rng.standard_normal((n_samples, n_channels), dtype=np.float32)
    lfp = gaussian_filter1d(rng.standard_normal((n_samples // 30 + 2, n_channels)), 20, axis=0)
    lfp *= 5 * noise_uv / max(lfp.std(), 1e-12)
    x += np.repeat(lfp, 30, axis=0)[:n_samples].astype(np.float32)
    w, trough = spike_template()
    amp = np.float32(snr * noise_uv)
    for offset, value in enumerate(w):  # add the waveform sample by sample: vectorised over spikes
        idx = spike_samples - trough + offset
        ok = (idx >= 0) & (idx < n_samples)
        np.add.at(x, (idx[ok], spike_channels[ok]), amp * np.float32(value))
    return x
