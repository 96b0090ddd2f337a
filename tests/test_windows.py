"""Windows read from the day's bins: the trainer, the contract's fit and the channel reference see what the window
arrays hold, without the arrays (ten times the day's memory at the default hop) ever being built."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignnet.model.contract import DataContract
from alignnet.training.batches import Batches
from alignnet.training.run import channel_reference
from alignnet.training.trainer import TrainConfig
from alignnet.training.windows import DayWindows, fit_contract, split_trials, windows_in_trials


def both_ways(days, trials_key="train", hop=3):
    """Each day's windows cut lazily, and the same windows as arrays."""
    lazy = []
    for day in days:
        trials = split_trials(day, gap_bins=20)[trials_key]
        lazy.append(windows_in_trials(day, trials, 20, hop, "pos"))
    eager = [DayWindows(w.day, w.counts.copy(), w.behavior.copy(), w.starts) for w in lazy]
    return lazy, eager


def test_lazy_windows_are_the_windows_of_their_trials(tiny_days):
    day = tiny_days[0]
    split = split_trials(day, gap_bins=20)
    w = windows_in_trials(day, split["val"], 20, 3, "pos")
    assert w.series is not None and len(w) > 0 and w.n_channels == day.n_channels
    counts, beh, trials = day.windows(20, 3, starts=w.starts)
    np.testing.assert_array_equal(w.counts, counts)
    np.testing.assert_array_equal(w.behavior, beh)
    assert np.isin(trials, split["val"]).all()  # no window straddles into another split
    part = w.take(slice(2, 5))
    assert part.series is w.series and len(part) == 3
    np.testing.assert_array_equal(part.counts, counts[2:5])
    cover = w.coverage()
    assert cover.sum() == len(w) * 20 and cover[w.starts[0]] >= 1
    with pytest.raises(ValueError, match="needs counts and behavior"):
        DayWindows("d")


@pytest.mark.parametrize("matched", [True, False])
def test_contract_fit_from_bins_equals_fit_on_windows(tiny_days, matched):
    lazy, eager = both_ways(tiny_days)
    a = fit_contract(DataContract(n_channels=64, window_bins=20, units_matched=matched), lazy)
    b = fit_contract(DataContract(n_channels=64, window_bins=20, units_matched=matched), eager)
    for key in ("spike_scale", "behavior_mean", "behavior_std"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-9, err_msg=key)
    if not matched:
        assert a.readin_spike_scale == pytest.approx(b.readin_spike_scale, rel=1e-9)
    ref_a, ref_b = channel_reference(lazy, a), channel_reference(eager, b)
    np.testing.assert_allclose(ref_a["mean"], ref_b["mean"], rtol=1e-6)
    np.testing.assert_allclose(ref_a["std"], ref_b["std"], rtol=1e-6)
    bad = [DayWindows(w.day, starts=w.starts, series=(w.series[0] * -1, w.series[1], 20)) for w in lazy]
    with pytest.raises(ValueError, match="non-negative"):
        fit_contract(DataContract(n_channels=64, window_bins=20), bad)


def test_batches_from_bins_equal_batches_from_windows(tiny_days):
    lazy, eager = both_ways(tiny_days)
    contract = fit_contract(DataContract(n_channels=64, window_bins=20), eager)
    a = Batches(lazy, contract, 16, torch.device("cpu"), on_device=True)
    b = Batches(eager, contract, 16, torch.device("cpu"))
    assert len(a) == len(b) and a.plan(3, 0)[0][1].tolist() == b.plan(3, 0)[0][1].tolist()
    for k, idx in a.plan(1, 0)[:5]:
        x, y = a.get(k, idx), b.get(k, idx)
        assert x["day"] == y["day"]
        for key in ("spikes", "behavior", "starts"):
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


def test_a_compiled_step_sees_one_batch_shape(tiny_days):
    """Compiled training drops each day's smaller last batch (one shape: no recompiles, CUDA graphs replay), but not
    a day too short to fill one batch; evaluation keeps every window."""
    lazy, _ = both_ways(tiny_days)
    contract = fit_contract(DataContract(n_channels=64, window_bins=20), lazy)
    short = lazy[0].take(slice(0, 10))
    data = Batches([*lazy, short], contract, 16, torch.device("cpu"))
    full = data.plan(0, 0, full_only=True)
    assert {len(i) for k, i in full if k < 3} == {16} and [len(i) for k, i in full if k == 3] == [10]
    assert sum(len(i) for _, i in data.plan(None, 0)) == len(data)
    assert sum(len(i) for _, i in data.plan(0, 0)) > sum(len(i) for _, i in full)


def test_learning_rate_scales_with_batch_size():
    assert TrainConfig(lr=1e-3, batch_size=1024).peak_lr() == 1e-3  # no reference batch: as given
    assert TrainConfig(lr=1e-3, batch_size=1024, lr_batch=256).peak_lr() == pytest.approx(2e-3)
    assert TrainConfig(lr=1e-3, batch_size=64, lr_batch=256).peak_lr() == pytest.approx(5e-4)
    assert TrainConfig(lr=1e-3, batch_size=256, lr_batch=256).peak_lr(processes=4) == pytest.approx(2e-3)  # DDP
    with pytest.raises(ValueError, match="compile_mode"):
        TrainConfig(compile_mode="fast")
