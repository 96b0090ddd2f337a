"""Windows for training and evaluation: trial splits that never leak, and normalisation through the data contract.

Days keep their own channel counts (real recordings sort different units each day), so windows are grouped by day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.contract import DataContract
from training.data import Dataset, Day


@dataclass
class DayWindows:
    """Windows of one day: counts (N, C_day, T) and behavior (N, D, T) in data units."""

    day: str
    counts: np.ndarray
    behavior: np.ndarray

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def take(self, idx: np.ndarray) -> DayWindows:
        return DayWindows(self.day, self.counts[idx], self.behavior[idx])


def split_trials(day: Day, test_fraction: float = 0.2, val_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Trials in recording order: the last ``test_fraction`` are test, the last ``val_fraction`` of the rest are
    validation (for early stopping and hyper-parameters), the remainder train."""
    trials = np.unique(day.trial_id)
    n_test = int(round(len(trials) * test_fraction))
    rest = trials[: len(trials) - n_test]
    n_val = int(round(len(rest) * val_fraction))
    return {"train": rest[: len(rest) - n_val], "val": rest[len(rest) - n_val:], "test": trials[len(trials) - n_test:]}


def first_trials(day: Day, fraction: float) -> np.ndarray:
    """The first ``fraction`` of a day's trials (a small labelled calibration slice of a new day)."""
    trials = np.unique(day.trial_id)
    return trials[: max(1, int(round(len(trials) * fraction)))]


def windows_in_trials(
    day: Day, trials: np.ndarray | None, window_bins: int, hop_bins: int, behavior: str,
    cross_segments: bool = False,
) -> DayWindows:
    """Windows whose every bin belongs to one of ``trials`` (all trials when None): no window straddles a split."""
    starts = day.window_starts(window_bins, hop_bins, cross_segments)
    counts, beh, win_trials = day.windows(window_bins, hop_bins, behavior, starts=starts)
    if trials is not None:
        keep = np.isin(win_trials, trials).all(axis=1)
        counts, beh = counts[keep], beh[keep]
    return DayWindows(day.name, counts, beh)


class Normaliser:
    """Applies the data contract's normalisation to windows of any day.

    Days whose channels match the contract use its per-channel spike scale; other days (own units, read through a
    per-day read-in) use log1p(counts) divided by one global scale, stored in the contract's extra."""

    def __init__(self, contract: DataContract) -> None:
        self.contract = contract

    @classmethod
    def fit(cls, contract: DataContract, train: list[DayWindows]) -> Normaliser:
        matched = [w for w in train if w.counts.shape[1] == contract.n_channels]
        beh = np.concatenate([w.behavior for w in train])
        if matched:
            contract.fit(np.concatenate([w.counts for w in matched]), beh)
        else:
            contract.spike_scale = [1.0] * contract.n_channels
            contract.behavior_mean = [float(v) for v in beh.mean(axis=(0, 2))]
            contract.behavior_std = [float(max(s, 1e-9)) for s in beh.std(axis=(0, 2))]
        all_counts = np.concatenate([np.log1p(w.counts).ravel() for w in train])
        contract.extra["global_spike_scale"] = float(max(all_counts.std(), 1e-6))
        return cls(contract)

    def spikes(self, counts: np.ndarray) -> np.ndarray:
        if counts.shape[1] == self.contract.n_channels:
            return self.contract.preprocess_spikes(counts)
        return (np.log1p(counts.astype(np.float32)) / self.contract.extra["global_spike_scale"]).astype(np.float32)

    def behavior(self, behavior: np.ndarray) -> np.ndarray:
        return self.contract.preprocess_behavior(behavior)

    def rates_to_counts(self, y: np.ndarray) -> np.ndarray:
        """Model spike output (normalised space) -> expected counts per bin."""
        if y.shape[1] == self.contract.n_channels:
            return self.contract.postprocess_rates(y)
        return np.clip(np.expm1(np.maximum(y, 0) * self.contract.extra["global_spike_scale"]), 0, None)


def dataset_contract(ds: Dataset, model_channels: int | None = None, window_bins: int | None = None) -> DataContract:
    """The contract of a dataset, with the model's channel space (its own when units match across days)."""
    over = {}
    if model_channels is not None:
        over["n_channels"] = model_channels
    if window_bins is not None:
        over["window_bins"] = window_bins
    return ds.contract(**over)
