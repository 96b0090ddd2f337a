"""The cortex setting of the simulator: latent dynamics, trial gains, within-day drift, a 2-D array."""

import numpy as np
import pytest

from alignnet.recordings.dynamics import CortexState, DynamicsConfig, LatentSystem, grid_mixing, grid_shape
from alignnet.recordings.importers import simday_to_day
from alignnet.recordings.simulator import SimConfig, simulate_days


def test_grid_mixing_is_identity_at_rest_and_a_neighbour_at_one_pitch():
    assert grid_shape(64) == (8, 8) and grid_shape(96) == (10, 10)
    np.testing.assert_allclose(grid_mixing(64, 0.0, 0.0), np.eye(64))
    m = grid_mixing(64, 1.0, 0.0)  # each electrode records the units one column over; the last column none
    assert m[0, 1] == 1.0 and m[7].sum() == 0.0 and m[8, 9] == 1.0
    m = grid_mixing(64, 0.3, -0.2)  # bilinear: inside the array every row still sums to one
    assert m[27].sum() == pytest.approx(1.0) and (m >= 0).all()
    assert m[27, 27] == pytest.approx(0.7 * 0.8) and m[27, 28] == pytest.approx(0.3 * 0.8)
    assert m[27, 19] == pytest.approx(0.7 * 0.2)  # one row up (dy < 0)


def test_latent_state_carried_across_chunks_equals_one_pass():
    cfg = DynamicsConfig(latent_noise=0.0, trial_gain_log_std=0.0, within_day_log_std=0.0)
    system = LatentSystem.draw(np.random.default_rng(0), cfg)
    drive = np.exp(1j * np.linspace(0, 20, 3000)) * np.linspace(0, 1, 3000)
    whole, _, _ = CortexState(cfg, system, 4, np.random.default_rng(1)).advance(drive, np.array([0]))
    state = CortexState(cfg, system, 4, np.random.default_rng(1))
    parts = [state.advance(chunk, None)[0] for chunk in np.array_split(drive, 7)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-12)
    # a step of intended velocity settles to gain * velocity after a rotating transient
    step, _, _ = CortexState(cfg, system, 4, np.random.default_rng(1)).advance(np.ones(5000, complex), None)
    np.testing.assert_allclose(step[-1], system.gains, atol=1e-3)
    assert np.abs(np.diff(np.unwrap(np.angle(step[:300, 0] - system.gains[0])))).sum() > 0.5  # it turns


def test_cortex_setting_is_harder_than_simple_and_keeps_true_rates():
    days = {}
    for setting in ("simple", "cortex"):
        cfg = SimConfig(n_days=1, trials_per_day=60, seed=4, dynamics=DynamicsConfig.named(setting))
        days[setting] = simday_to_day(next(simulate_days(cfg)), 0.02, 0.04)
    for day in days.values():
        truth = day.extra["truth_rate"]  # expected counts per bin: they account for the spikes drawn from them
        assert truth.shape == day.counts.shape
        assert 0.9 < day.counts.sum() / truth.sum() < 1.02  # (the 1-ms dead time removes a few)
    # same movements (same seed): the simple setting's rates are a function of kinematics; the cortex setting
    # adds latent noise, trial gains and drift, so kinematics explain less of its true rates
    def explained(day):
        x = np.concatenate([day.pos, day.vel, np.ones((day.n_bins, 1))], axis=1)
        y = day.extra["truth_rate"]
        res = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
        return 1 - res.var(0).sum() / y.var(0).sum()
    assert explained(days["cortex"]) < explained(days["simple"]) - 0.05
    assert "truth_shift_y" in days["cortex"].extra


def test_named_settings_and_old_datasets():
    with pytest.raises(ValueError, match="setting"):
        DynamicsConfig.named("fancy")
    simple = SimConfig.from_dict({"n_days": 2})  # a dataset simulated before the setting existed
    assert simple.dynamics.setting == "simple" and not simple.dynamics.stateful
    assert SimConfig().dynamics.setting == "cortex" and SimConfig().dynamics.stateful
    again = SimConfig.from_dict(SimConfig().to_dict())
    assert again.dynamics == SimConfig().dynamics


def test_psth_recovers_a_target_locked_pattern_and_scores_it(tiny_days):
    from alignnet.recordings.psth import BEFORE_S, movement_onsets, per_bin, psth, psth_r

    day = tiny_days[0]
    onsets = movement_onsets(day)
    assert (onsets >= 0).all() and len(onsets) == day.n_trials
    # a value that is a function of (target, time from onset) alone averages back to that function
    rel = np.full(day.n_bins, -1000)
    for t, o in zip(np.unique(day.trial_id), onsets):
        idx = np.flatnonzero(day.trial_id == t)
        rel[idx] = idx - o
    truth = np.stack([np.sin(rel / 5.0 + day.target), np.cos(rel / 7.0) * day.target], axis=1).astype(float)
    p = psth(truth, day, onsets)
    before = int(round(BEFORE_S / day.bin_s))
    g = sorted(set(day.target.tolist()))
    np.testing.assert_allclose(p[0, before + 3, 0], np.sin(3 / 5.0 + g[0]), atol=1e-9)
    assert psth_r(p, p) == pytest.approx(1.0)
    noisy = truth + np.random.default_rng(0).standard_normal(truth.shape) * 3
    assert 0.2 < psth_r(p, psth(noisy, day, onsets)) < 0.999
    # windows back to bins: the last window covering a bin wins, uncovered bins are NaN
    w = np.arange(2 * 2 * 4, dtype=float).reshape(2, 2, 4)
    bins = per_bin(w, np.array([0, 2]), 8)
    assert np.isnan(bins[6:]).all() and bins[2, 0] == w[1, 0, 0] and bins[1, 1] == w[0, 1, 1]
