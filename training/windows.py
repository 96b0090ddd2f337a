"""Windows for training and evaluation: trial splits that never leak, and normalisation through the data contract.

Days keep their own channel counts (real recordings sort different units each day), so windows are grouped by day.
"""

from __future__ import annotations

import numpy as np

from alignnet.model.contract import DataContract
from alignnet.recordings.dataset import Dataset, Day, fit_hop, short_segments  # noqa: F401  (re-exported)
from alignnet.recordings.preprocess import gather_windows


class DayWindows:
    """Windows of one day: counts (N, C_day, T) and behavior (N, D, T) in data units, and each one's first bin.

    Windows cut from a day (``windows_in_trials``) are views of the day's continuous bins (``series``), gathered
    into arrays the first time ``counts`` or ``behavior`` is read. At the default hop a window overlaps nine others,
    so the arrays take ten times the day's memory (about 1 GB a day at paper scale): the trainer and the contract's
    fit read the series instead, and the arrays of training windows are never built."""

    def __init__(self, day: str, counts: np.ndarray | None = None, behavior: np.ndarray | None = None,
                 starts: np.ndarray | None = None, series: tuple[np.ndarray, np.ndarray, int] | None = None) -> None:
        """Either ``counts`` and ``behavior``, or ``series`` = (counts (n_bins, C), behavior (n_bins, D), window
        bins) of the day with ``starts`` (N,) indexing it."""
        if (counts is None or behavior is None) and (series is None or starts is None):
            raise ValueError("DayWindows needs counts and behavior, or a day's series and window starts")
        self.day, self.series = day, series
        self.starts = None if starts is None else np.asarray(starts, np.int64)
        self._counts, self._behavior = counts, behavior

    @property
    def counts(self) -> np.ndarray:
        if self._counts is None:
            self._counts = gather_windows(self.series[0], self.starts, self.series[2])
        return self._counts

    @property
    def behavior(self) -> np.ndarray:
        if self._behavior is None:
            self._behavior = gather_windows(self.series[1], self.starts, self.series[2])
        return self._behavior

    @property
    def n_channels(self) -> int:
        return int(self.series[0].shape[1] if self._counts is None else self._counts.shape[1])

    def coverage(self) -> np.ndarray:
        """(n_bins,) how many windows hold each bin of the series: the weight of a bin in any statistic over the
        windows."""
        n, w = self.series[0].shape[0], self.series[2]
        edges = np.zeros(n + 1, np.int64)
        np.add.at(edges, self.starts, 1)
        np.add.at(edges, self.starts + w, -1)
        return np.cumsum(edges[:n])

    def __len__(self) -> int:
        return int(len(self.starts) if self._counts is None else self._counts.shape[0])

    def take(self, idx: np.ndarray | slice) -> DayWindows:
        starts = None if self.starts is None else self.starts[idx]
        built = self._counts is not None and self._behavior is not None
        return DayWindows(self.day, self._counts[idx] if built else None, self._behavior[idx] if built else None,
                          starts, self.series)


def split_trials(day: Day, test_fraction: float = 0.2, val_fraction: float = 0.1,
                 gap_bins: int = 0) -> dict[str, np.ndarray]:
    """Trials in recording order: the last ``test_fraction`` are test, the last ``val_fraction`` of the rest are
    validation (for early stopping and hyper-parameters), the remainder train. A day split by time (a continuous
    session cut into blocks) also leaves out the blocks that cover ``gap_bins`` at the start of validation and test,
    so no train window touches the bins right before a validation or test window."""
    trials = np.unique(day.trial_id)
    n_test = int(round(len(trials) * test_fraction))
    rest = trials[: len(trials) - n_test]
    n_val = int(round(len(rest) * val_fraction))
    split = {"train": rest[: len(rest) - n_val], "val": rest[len(rest) - n_val:], "test": trials[len(trials) - n_test:]}
    if day.split_by == "time" and gap_bins > 0:
        gap = max(1, int(np.ceil(gap_bins * len(trials) / day.n_bins)))  # blocks are (nearly) equal in length
        for key in ("val", "test"):
            if len(split[key]) > gap:
                split[key] = split[key][gap:]
    return split


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
    if trials is not None:
        keep = np.isin(gather_windows(day.trial_id[:, None], starts, window_bins)[:, 0, :], trials).all(axis=1)
        starts = starts[keep]
    return DayWindows(day.name, starts=starts, series=(*day.float_series(behavior), window_bins))


def fit_contract(contract: DataContract, train: list[DayWindows]) -> DataContract:
    """Fit the contract's normalisation on training windows of one or more days (the contract itself knows whether
    units are matched across days; see ``DataContract.fit``). Windows cut from a day are fitted from its bins, each
    weighted by the number of windows that hold it: the same statistics without building the windows."""
    if all(w.series is not None for w in train):
        return contract.fit_weighted([(w.series[0], w.series[1], w.coverage()) for w in train])
    return contract.fit([w.counts for w in train], [w.behavior for w in train])


def dataset_contract(ds: Dataset, model_channels: int | None = None, window_bins: int | None = None) -> DataContract:
    """The contract of a dataset, with the model's channel space (its own when units match across days)."""
    over = {}
    if model_channels is not None:
        over["n_channels"] = model_channels
    if window_bins is not None:
        over["window_bins"] = window_bins
    return ds.contract(**over)


def held_out_windows(data, contract: DataContract, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of the last 20 % of trials of a dataset's last day, as raw counts and behavior (at
    most ``n``): the test split that `alignnet train` holds out of every day by default (``train.test_fraction``
    0.2; artifacts trained before it held nothing out)."""
    ds = data if isinstance(data, Dataset) else Dataset(data)
    day = ds.day(len(ds) - 1)
    test = split_trials(day, gap_bins=contract.window_bins)["test"]
    w = windows_in_trials(day, test, contract.window_bins, contract.window_bins, contract.behavior_kind)
    if len(w) == 0:
        raise ValueError(f"{ds.root}: no held-out windows of {contract.window_bins} bins on the last day")
    return w.counts[:n], w.behavior[:n]
