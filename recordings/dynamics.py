"""What makes the default simulator harder than a tuning curve: latent dynamics, trial-to-trial variability, slow
drift within a day and a 2-D electrode array.

- **Latent dynamics.** Motor cortex is a dynamical system that the intended movement drives (rotational dynamics,
  Churchland et al. 2012). Here: ``latent_planes`` damped rotations, each a complex first-order system
  ``z[t] = lam z[t-1] + g (1 - lam) u[t] + noise`` on the 1-ms grid, driven by the intended velocity ``u`` (as a
  complex number) ``plan_s`` ahead of the neural lead. A step of intended velocity makes each plane rotate and
  settle; every unit reads the planes through its own complex loading. Input-independent latent noise makes the
  rates differ from trial to trial for the same movement.
- **Trial-to-trial variability**: a shared log-normal gain of the task modulation per trial (engagement).
- **Slow drift within a day**: each channel's baseline follows an Ornstein-Uhlenbeck process in log space.
- **Electrode shift on a 2-D array**: channels sit on a grid; a shift (dx, dy) in fractions of the pitch makes each
  electrode record the units of its neighbours by bilinear interpolation (units shifted off the array are lost).

All filters are ``scipy.signal.lfilter`` with carried state, so the same code runs on a whole day at once and on
the closed-loop demo's 20-ms chunks. The combination is written by hand: no maintained library simulates this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

BEHAVIOR_FS = 1_000  # the simulator's 1-ms grid


@dataclass
class DynamicsConfig:
    setting: str = "cortex"  # cortex (all of the above) | simple (rates a static function of kinematics; 1-D shift)
    latent_planes: int = 3  # damped rotational planes of the latent system (0: none)
    rotation_hz: tuple[float, float] = (0.5, 2.5)  # range of the planes' rotation frequencies
    decay_s: tuple[float, float] = (0.1, 0.3)  # range of the planes' time constants
    plan_s: float = 0.1  # the latent system is driven by the velocity intended this far beyond the neural lead
    latent_weight: tuple[float, float] = (0.3, 0.8)  # per-unit latent modulation depth relative to its baseline
    latent_noise: float = 0.35  # stationary std of input-independent latent activity (driven latent ~ 1 at speed)
    trial_gain_log_std: float = 0.2  # std of the per-trial log gain of the task modulation
    within_day_log_std: float = 0.15  # std of the within-day log-baseline drift of each channel
    within_day_timescale_s: float = 240.0  # its correlation time
    array: str = "grid"  # grid: channels on a rows x cols array, 2-D shift | line: channels in a row, 1-D shift

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"simulator setting must be one of {', '.join(SETTINGS)}, got {self.setting!r}")
        if self.array not in ("grid", "line"):
            raise ValueError(f"array must be 'grid' or 'line', got {self.array!r}")
        if self.latent_planes < 0:
            raise ValueError(f"latent_planes must be >= 0, got {self.latent_planes}")

    @classmethod
    def named(cls, setting: str) -> DynamicsConfig:
        if setting not in SETTINGS:
            raise ValueError(f"simulator setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
        return cls(**SETTINGS[setting])

    @property
    def stateful(self) -> bool:
        """Rates depend on more than the kinematics of the moment (needs a CortexState)."""
        return self.latent_planes > 0 or self.trial_gain_log_std > 0 or self.within_day_log_std > 0

    @property
    def lookahead_s(self) -> float:
        return self.plan_s if self.latent_planes > 0 else 0.0


SETTINGS: dict[str, dict] = {
    "cortex": {},
    # the simulator before the latent dynamics (kept as a named setting): an instantaneous function of kinematics
    "simple": dict(setting="simple", latent_planes=0, latent_noise=0.0, trial_gain_log_std=0.0,
                   within_day_log_std=0.0, array="line"),
}


@dataclass
class LatentSystem:
    """The planes' poles and input gains (complex, (K,)): a property of the subject, fixed across days."""

    poles: np.ndarray
    gains: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, cfg: DynamicsConfig) -> LatentSystem:
        k = cfg.latent_planes
        hz = rng.uniform(*cfg.rotation_hz, k)
        tau = rng.uniform(*cfg.decay_s, k)
        poles = np.exp(-1.0 / (tau * BEHAVIOR_FS) + 2j * np.pi * hz / BEHAVIOR_FS)
        return cls(poles=poles, gains=np.exp(1j * rng.uniform(-np.pi, np.pi, k)))


def grid_shape(n_channels: int) -> tuple[int, int]:
    """Rows x cols of the array: as square as possible (8 x 8 for 64 channels; the last row may be short)."""
    cols = int(np.ceil(np.sqrt(n_channels)))
    return int(np.ceil(n_channels / cols)), cols


def grid_mixing(n_channels: int, dx: float, dy: float) -> np.ndarray:
    """(C, C) matrix: recorded channel i picks up the units of the electrode at its own grid position + (dy, dx)
    pitches, interpolated bilinearly between the four electrodes around that point; outside the array, nothing."""
    rows, cols = grid_shape(n_channels)
    r, c = np.divmod(np.arange(n_channels), cols)
    m = np.zeros((n_channels, n_channels))
    for oy, wy in ((np.floor(dy), 1 - (dy - np.floor(dy))), (np.floor(dy) + 1, dy - np.floor(dy))):
        for ox, wx in ((np.floor(dx), 1 - (dx - np.floor(dx))), (np.floor(dx) + 1, dx - np.floor(dx))):
            rr, cc = r + int(oy), c + int(ox)
            src = rr * cols + cc
            ok = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols) & (src < n_channels) & (wx * wy > 0)
            m[np.flatnonzero(ok), src[ok]] += wx * wy
    return m


class CortexState:
    """The state a stateful setting carries from one chunk of milliseconds to the next: the latent planes, the
    within-day baseline drift and the current trial's gain. ``advance`` returns what ``unit_rates`` needs."""

    def __init__(self, cfg: DynamicsConfig, system: LatentSystem | None, n_channels: int,
                 rng: np.random.Generator) -> None:
        self.cfg, self.system, self.rng = cfg, system, rng
        k = system.poles.size if system is not None and cfg.latent_planes > 0 else 0
        self.z = np.zeros(k, complex)  # latent planes' state
        self.noise_z = cfg.latent_noise * (rng.standard_normal(k) + 1j * rng.standard_normal(k)) / np.sqrt(2)
        self.drift = cfg.within_day_log_std * rng.standard_normal(n_channels)  # stationary start
        self.gain = self._draw_gain()
        self.ms_left_in_trial = 0  # for streams without trial times: a new gain every 2-3.5 s

    def _draw_gain(self) -> float:
        return float(np.exp(self.cfg.trial_gain_log_std * self.rng.standard_normal()))

    def advance(self, drive: np.ndarray, trial_starts: np.ndarray | None = None):
        """``drive`` (n,) complex intended velocity (relative to peak speed); ``trial_starts`` indices into this
        chunk where a new trial begins (None: a new pseudo-trial every 2-3.5 s).

        Returns latent (n, K) complex, log-baseline drift (n, C), task-modulation gain (n, 1)."""
        n = drive.shape[0]
        latent = np.zeros((n, self.z.size), complex)
        for j in range(self.z.size):
            lam, g = self.system.poles[j], self.system.gains[j]
            driven, _ = lfilter([g * (1 - lam)], [1, -lam], drive, zi=[lam * self.z[j]])
            self.z[j] = driven[-1]
            # input-independent activity with the same dynamics, scaled to a stationary std of latent_noise
            eps = (self.rng.standard_normal(n) + 1j * self.rng.standard_normal(n)) / np.sqrt(2)
            scale = self.cfg.latent_noise * np.sqrt(1 - abs(lam) ** 2)
            noise, _ = lfilter([scale], [1, -lam], eps, zi=[lam * self.noise_z[j]])
            self.noise_z[j] = noise[-1]
            latent[:, j] = driven + noise
        a = np.exp(-1.0 / (self.cfg.within_day_timescale_s * BEHAVIOR_FS))
        eps = self.rng.standard_normal((n, self.drift.size)) * (self.cfg.within_day_log_std * np.sqrt(1 - a * a))
        drift, _ = lfilter([1.0], [1, -a], eps, axis=0, zi=(a * self.drift)[None, :])
        self.drift = drift[-1]
        return latent, drift, self._gains(n, trial_starts)

    def _gains(self, n: int, trial_starts: np.ndarray | None) -> np.ndarray:
        gain = np.empty((n, 1))
        if trial_starts is None:  # a stream without trial times (the closed-loop demo)
            t = 0
            while t < n:
                if self.ms_left_in_trial <= 0:
                    self.gain, self.ms_left_in_trial = self._draw_gain(), int(self.rng.integers(2000, 3500))
                step = min(n - t, self.ms_left_in_trial)
                gain[t:t + step] = self.gain
                t, self.ms_left_in_trial = t + step, self.ms_left_in_trial - step
            return gain
        edges = np.concatenate([[0], np.asarray(trial_starts, int), [n]])
        for a, b in zip(edges[:-1], edges[1:]):
            if b > a:
                if a > 0 or a in trial_starts:
                    self.gain = self._draw_gain()
                gain[a:b] = self.gain
        return gain
