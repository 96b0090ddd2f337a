"""The simulated subject's task: an 8-target center-out joystick task, trial by trial, on the 1-kHz grid.

Written by hand (minimum-jerk reaches and timing draws); numpy/scipy do the numerics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d


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



def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float], size=None) -> np.ndarray:
    return rng.uniform(lo_hi[0], lo_hi[1], size)


def _min_jerk(n: int) -> np.ndarray:
    """Minimum-jerk position profile from 0 to 1 over n samples (bell-shaped speed)."""
    s = np.linspace(0.0, 1.0, n)
    return 10 * s**3 - 15 * s**4 + 6 * s**5


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
