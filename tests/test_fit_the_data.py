"""Defaults that fit the recording: time splits for continuous sessions, protocols for the days there are, minimal
importer layouts, window-sized Wiener history and hop, and `data info` saying why."""

import numpy as np
import pytest

from alignnet.cli.main import main as cli
from alignnet.recordings.dataset import TIME_BLOCKS, DataError, Day
from alignnet.recordings.importers import import_binned_npz
from alignnet.training.protocols import EvalConfig, fit_days
from alignnet.training.windows import fit_hop, split_trials, windows_in_trials


def _continuous_day(n: int = 5000) -> Day:
    rng = np.random.default_rng(0)
    vel = rng.normal(size=(n, 2)).astype(np.float32)
    return Day("s", 0.05, rng.poisson(1.0, (n, 8)), vel.cumsum(0), vel, np.zeros(n, int), np.zeros(n, int),
               np.full(n, -1), np.arange(n) * 0.05)


def test_a_continuous_session_is_split_by_time_with_a_window_gap():
    day = _continuous_day()
    assert day.split_by == "time" and day.n_trials == TIME_BLOCKS
    assert (day.extra["recorded_trial_id"] == 0).all()
    assert np.all(np.diff(day.trial_id) >= 0)  # blocks are contiguous, in time order
    split = split_trials(day, 0.2, 0.1, gap_bins=100)
    train_end = np.flatnonzero(np.isin(day.trial_id, split["train"])).max()
    val_start = np.flatnonzero(np.isin(day.trial_id, split["val"])).min()
    test_start = np.flatnonzero(np.isin(day.trial_id, split["test"])).min()
    val_end = np.flatnonzero(np.isin(day.trial_id, split["val"])).max()
    assert val_start - train_end > 100 and test_start - val_end > 100  # a window's gap before validation and test
    w = windows_in_trials(day, split["test"], 40, 40, "vel")
    assert len(w) > 0 and w.starts.min() >= test_start


def test_a_recording_with_trials_keeps_them():
    n = 2000
    day = Day("t", 0.02, np.ones((n, 4)), np.zeros((n, 2)), np.zeros((n, 2)), np.repeat(np.arange(20), 100),
              np.zeros(n, int), np.zeros(n, int), np.arange(n) * 0.02)
    assert day.split_by == "trial" and "recorded_trial_id" not in day.extra


def test_protocols_fit_the_days_there_are():
    cfg = EvalConfig()
    assert fit_days(cfg, 1, ["auto"])[0] == ["single-day"]
    with pytest.raises(ValueError, match="two recording days"):
        fit_days(EvalConfig(), 1, ["cross-day"])
    cfg = EvalConfig()
    protocols, notes = fit_days(cfg, 2, ["auto"])
    assert protocols == ["single-day", "cross-day"] and (cfg.cross_train_days, cfg.cross_test_day) == ([0], 1)
    cfg = EvalConfig(cross_test_day=5)
    with pytest.raises(ValueError, match="cross_test_day 5"):
        fit_days(cfg, 3, ["cross-day"])
    cfg = EvalConfig()
    fit_days(cfg, 3, ["cross-day"], matched=False)
    assert cfg.calib_fraction == 0.1  # sorted units: the new day's read-in needs a labelled slice


def test_hop_and_wiener_history_fit_short_windows():
    from alignnet.model import create_model

    assert fit_hop(20, 100) == 20 and fit_hop(10, 20) == 10 and fit_hop(20, 5) == 1 and fit_hop(20, 40) == 20
    assert create_model("wiener", n_channels=4, window_bins=5, n_lags=10).config.n_lags == 4


def test_the_binned_layout_needs_only_counts_a_bin_width_and_one_behavior(tmp_path):
    rng = np.random.default_rng(0)
    vel = rng.normal(size=(300, 2)).astype(np.float32)
    np.savez(tmp_path / "v.npz", spike_counts=rng.poisson(1.0, (300, 6)), bin_size_s=np.float32(0.1), vel=vel)
    day = import_binned_npz(tmp_path / "v.npz")
    assert day.split_by == "time" and (day.target == -1).all()
    np.testing.assert_allclose(np.diff(day.pos, axis=0)[1:], vel[2:] * 0.1, atol=1e-5)  # pos integrates vel
    np.savez(tmp_path / "none.npz", spike_counts=rng.poisson(1.0, (300, 6)), bin_size_s=np.float32(0.1))
    with pytest.raises(DataError, match="pos or vel"):
        import_binned_npz(tmp_path / "none.npz")
    np.savez(tmp_path / "flat.npz", spike_counts=rng.poisson(1.0, (300, 6)), bin_size_s=np.float32(0.1),
             vel=np.zeros((300, 2), np.float32))
    assert cli(["data", "import", str(tmp_path / "flat.npz"), "--out", str(tmp_path / "D"), "--behavior", "vel"]) == 2


def test_data_info_explains_its_dashes_and_what_train_will_use(tmp_path, capsys, caplog):
    rng = np.random.default_rng(1)
    n = 400
    trial = np.repeat(np.arange(4), n // 4)  # 4 trials: too few to hold out 20 % for the ridge R²
    vel = rng.normal(size=(n, 2)).astype(np.float32)
    np.savez(tmp_path / "few.npz", spike_counts=rng.poisson(1.0, (n, 6)), bin_size_s=np.float32(0.02), vel=vel,
             pos=np.zeros((n, 2), np.float32), trial_id=trial, timestep=np.tile(np.arange(n // 4), 4))
    assert cli(["data", "import", str(tmp_path / "few.npz"), "--out", str(tmp_path / "D"), "--behavior", "vel"]) == 0
    assert "'pos' is constant" in caplog.text and "few.npz" in caplog.text
    assert cli(["data", "info", str(tmp_path / "D")]) == 0
    out = capsys.readouterr().out
    assert "will use" in out and "window 100 bins" in out and "evaluate protocols: single-day" in out
    assert "splits: by time" in out  # 4 trials < 10: split by time (50 blocks)
    assert cli(["data", "info", str(tmp_path / "D"), "--behavior", "pos"]) == 0
    out = capsys.readouterr().out
    assert "'-' under ridge_r2" in out and "never changes" in out
