"""The data contract: what a window looks like and how it is normalised.

The contract is data, not constants: it comes from the dataset (channel count, bin width, window length) and from
training (normalisation statistics), is saved inside every artifact and applied by the same ``preprocess()`` in
training and in serving.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

CONTRACT_VERSION = 1
# What a served contract may describe: beyond these a config.json is not a recording of a brain (bins from 0.1 ms to
# 1 s, windows of at most 10,000 bins and 10 minutes, at most 100,000 channels and 64 behavior variables).
LIMITS = {"bin_s": (1e-4, 1.0), "window_bins": (1, 10_000), "window_s": (1e-3, 600.0), "n_channels": (1, 100_000),
          "behavior_dims": (1, 64)}


@dataclass
class DataContract:
    n_channels: int = 64  # channels (units or electrodes) of the model's input space
    bin_s: float = 0.02  # width of one time bin in seconds
    window_bins: int = 100  # bins per window (paper: 100 x 20 ms = 2 s)
    behavior_dims: int = 2  # behavior variables per bin (x, y)
    behavior_names: tuple[str, ...] = ("x", "y")  # names of the behavior variables, for humans and plots
    behavior_kind: str = "pos"  # which kinematic signal is decoded: "pos" or "vel"
    # normalisation, filled in by training: spikes -> log1p(counts) scaled per channel; behavior standardised
    spike_scale: list[float] | None = None  # (C,) divide log1p(counts) by this per channel
    behavior_mean: list[float] | None = None  # (behavior_dims,)
    behavior_std: list[float] | None = None  # (behavior_dims,)
    # True: channel k is the same electrode on every day (arrays), scaled per channel. False: every day has its own
    # sorted units, read through a per-day read-in; their log1p(counts) share one scale. Recorded by the dataset.
    units_matched: bool = True
    readin_spike_scale: float | None = None  # units_matched False: divide log1p(counts) of any day by this
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance (dataset, days, ...)

    def __post_init__(self) -> None:
        if not isinstance(self.n_channels, int) or self.n_channels < 1:
            raise ValueError(f"n_channels must be a positive int, got {self.n_channels!r}")
        if not (isinstance(self.bin_s, (int, float)) and math.isfinite(self.bin_s) and self.bin_s > 0):
            raise ValueError(f"bin_s must be a positive number of seconds, got {self.bin_s!r}")
        if not isinstance(self.window_bins, int) or self.window_bins < 1:
            raise ValueError(f"window_bins must be a positive int, got {self.window_bins!r}")
        if not isinstance(self.behavior_dims, int) or self.behavior_dims < 1:
            raise ValueError(f"behavior_dims must be a positive int, got {self.behavior_dims!r}")
        for name, (lo, hi) in LIMITS.items():
            value = self.window_s if name == "window_s" else getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"{name} of {value:g} is outside the plausible range {lo:g} to {hi:g}")
        self.behavior_names = tuple(self.behavior_names)
        if len(self.behavior_names) != self.behavior_dims:
            raise ValueError(
                f"behavior_names has {len(self.behavior_names)} names for behavior_dims={self.behavior_dims}"
            )
        for name, n in (("spike_scale", self.n_channels), ("behavior_mean", self.behavior_dims),
                        ("behavior_std", self.behavior_dims)):
            value = getattr(self, name)
            if value is not None:
                arr = np.asarray(value, dtype=np.float64)
                if arr.shape != (n,) or not np.all(np.isfinite(arr)):
                    raise ValueError(f"{name} must be {n} finite numbers, got shape {arr.shape}")
                if name != "behavior_mean" and not np.all(arr > 0):
                    raise ValueError(f"{name} must be positive (it divides the data), got {arr.min():g}")
                setattr(self, name, [float(v) for v in arr])
        if not isinstance(self.units_matched, bool):
            raise ValueError(f"units_matched must be true or false, got {self.units_matched!r}")
        if self.readin_spike_scale is not None and not (
                isinstance(self.readin_spike_scale, (int, float)) and math.isfinite(self.readin_spike_scale)
                and self.readin_spike_scale > 0):
            raise ValueError(f"readin_spike_scale must be a positive number, got {self.readin_spike_scale!r}")

    @property
    def window_s(self) -> float:
        return self.bin_s * self.window_bins

    @property
    def spike_shape(self) -> tuple[int, int]:
        """Shape of one spike window, (C, T)."""
        return (self.n_channels, self.window_bins)

    @property
    def behavior_shape(self) -> tuple[int, int]:
        """Shape of one behavior window, (D, T)."""
        return (self.behavior_dims, self.window_bins)

    @property
    def is_fitted(self) -> bool:
        scales = self.spike_scale is not None and (self.units_matched or self.readin_spike_scale is not None)
        return scales and self.behavior_mean is not None and self.behavior_std is not None

    def for_day(self, n_channels: int) -> DataContract:
        """The contract a service applies to one day read through its own read-in: that day's channel count,
        checked strictly, and the model space's spike scaling (one shared scale when units are not matched, so
        preprocessing is exactly what the read-in saw in training)."""
        if self.units_matched:
            if n_channels != self.n_channels:
                raise ValueError(f"the model reads {self.n_channels} matched channels; this day has {n_channels}")
            return DataContract.from_dict(self.to_dict())
        self._require_fitted()
        d = self.to_dict()
        d.update(n_channels=int(n_channels), spike_scale=[float(self.readin_spike_scale)] * int(n_channels),
                 units_matched=True, readin_spike_scale=None)
        return DataContract.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["behavior_names"] = list(self.behavior_names)
        d["version"] = CONTRACT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataContract:
        d = dict(d)
        version = d.pop("version", CONTRACT_VERSION)
        if version != CONTRACT_VERSION:
            raise ValueError(f"data contract version {version} is not supported (expected {CONTRACT_VERSION})")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown data contract field(s) {', '.join(unknown)}")
        return cls(**d)

    # ---- normalisation -------------------------------------------------------------------------------------
    def fit(self, counts: np.ndarray | list[np.ndarray], behavior: np.ndarray | list[np.ndarray]) -> DataContract:
        """Fit normalisation statistics on training windows: counts (N, C, T) (or one such array per day, whose C
        may differ by day when units are not matched) and behavior (N, D, T) (or one per day)."""
        days = [np.asarray(c, np.float64) for c in (counts if isinstance(counts, list) else [counts])]
        behavior = np.concatenate([np.asarray(b, np.float64) for b in
                                   (behavior if isinstance(behavior, list) else [behavior])])
        for c in days:
            self.check_spikes(c)
        self.check_behavior(behavior)
        if self.units_matched:
            scale = np.log1p(np.concatenate(days)).std(axis=(0, 2))
        else:
            scale = np.concatenate([np.log1p(c).ravel() for c in days]).std()
        return self._set_statistics(scale, behavior.mean(axis=(0, 2)), behavior.std(axis=(0, 2)))

    def fit_weighted(self, days: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> DataContract:
        """``fit`` from days' continuous bins instead of their windows: per day, counts (n_bins, C), behavior
        (n_bins, D) and each bin's weight (how many training windows hold it). The same statistics as ``fit`` on
        those windows, without building them (overlapping windows take ten times the day's memory)."""
        for counts, behavior, _ in days:
            if self.units_matched and counts.shape[1] != self.n_channels:
                raise ValueError(f"spike counts have {counts.shape[1]} channels, expected {self.n_channels}")
            if not np.isfinite(counts).all() or (counts < 0).any():
                raise ValueError("spike counts must be finite and non-negative")
            if behavior.shape[1] != self.behavior_dims or not np.isfinite(behavior).all():
                raise ValueError(f"behavior must be finite with {self.behavior_dims} dims, got {behavior.shape[1]}")
        weights = [np.asarray(w, np.float64) for *_, w in days]
        if sum(w.sum() for w in weights) == 0:
            raise ValueError("no training windows to fit the normalisation on")
        if self.units_matched:
            scale = weighted_std([(np.log1p(c.astype(np.float64)), w) for (c, _, _), w in zip(days, weights)])
        else:  # one scale over every unit of every day
            scale = weighted_std([(np.log1p(c.astype(np.float64)).reshape(-1, 1), np.repeat(w, c.shape[1]))
                                  for (c, _, _), w in zip(days, weights)])[0]
        beh = [(b.astype(np.float64), w) for (_, b, _), w in zip(days, weights)]
        return self._set_statistics(scale, weighted_mean(beh), weighted_std(beh))

    def _set_statistics(self, spike_std, behavior_mean: np.ndarray, behavior_std: np.ndarray) -> DataContract:
        """Keep fitted statistics (``fit``, ``fit_weighted``): ``spike_std`` per channel where units are matched,
        else one value over every unit (the read-ins' scale); a constant channel or dimension scales by 1."""
        if self.units_matched:
            self.spike_scale = [float(v) if v > 1e-6 else 1.0 for v in spike_std]
        else:
            self.spike_scale = [1.0] * self.n_channels
            self.readin_spike_scale = float(spike_std) if spike_std > 1e-6 else 1.0
        self.behavior_mean = [float(v) for v in behavior_mean]
        self.behavior_std = [float(v) if v > 1e-9 else 1.0 for v in behavior_std]
        return self

    def as_spikes(self, counts: np.ndarray) -> np.ndarray:
        """Counts (C, T) or (B, C, T), any real dtype -> validated (B, C, T) float32 (cast once; values beyond
        float32 become inf and are refused). Raises ValueError naming the problem. With units not matched, C is
        the day's own unit count and is not checked against the model's channel space."""
        return self._as_batch(counts, "spike", counts=True)

    def as_behavior(self, behavior: np.ndarray) -> np.ndarray:
        """Behavior (D, T) or (B, D, T) -> validated (B, D, T) float32 (see ``as_spikes``)."""
        return self._as_batch(behavior, "behavior", counts=False)

    def _as_batch(self, x: np.ndarray, what: str, counts: bool) -> np.ndarray:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"{'spike counts' if counts else 'behavior'} must be real numbers, got dtype {x.dtype}")
        if x.ndim == 2:
            x = x[None]
        rows, cols = self.spike_shape if counts else self.behavior_shape
        free_rows = counts and not self.units_matched  # a day's own units, read through its read-in
        if x.ndim != 3 or x.shape[2] != cols or (x.shape[1] != rows and not free_rows):
            label = "channels" if counts else "dims"
            raise ValueError(f"{what} windows must be {'C' if free_rows else rows} x {cols} ({label} x bins) or a "
                             f"batch of them (batch, {'C' if free_rows else rows}, {cols}), got {tuple(x.shape)}")
        with np.errstate(over="ignore", invalid="ignore"):
            x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{'spike counts contain' if counts else 'behavior contains'} NaN or infinite values "
                             "(or numbers beyond float32)")
        if counts and np.any(x < 0):
            raise ValueError("spike counts must be non-negative")
        return x

    def check_spikes(self, counts: np.ndarray) -> None:
        """Raise ValueError naming the problem unless counts is (N, C, T) of finite, non-negative numbers."""
        if np.ndim(counts) != 3:
            raise ValueError(f"spike windows must have shape (batch, {self.n_channels}, {self.window_bins}), got "
                             f"{tuple(np.shape(counts))}")
        self.as_spikes(counts)

    def check_behavior(self, behavior: np.ndarray) -> None:
        """Raise ValueError naming the problem unless behavior is (N, D, T) of finite numbers."""
        if np.ndim(behavior) != 3:
            raise ValueError(f"behavior windows must have shape (batch, {self.behavior_dims}, {self.window_bins}), "
                             f"got {tuple(np.shape(behavior))}")
        self.as_behavior(behavior)

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError("the data contract has no normalisation statistics yet: call fit() on training data")

    def _spike_scale(self) -> np.ndarray:
        if self.units_matched:
            return np.asarray(self.spike_scale, dtype=np.float32)[None, :, None]
        return np.float32(self.readin_spike_scale)

    def preprocess_spikes(self, counts: np.ndarray) -> np.ndarray:
        """(N, C, T) or (C, T) counts -> (N, C, T) float32 model input: log1p(counts) / scale (per channel; one
        shared scale when units are not matched)."""
        self._require_fitted()
        return self.scale_counts(self.as_spikes(counts))

    def scale_behavior(self, behavior: np.ndarray) -> np.ndarray:
        """``preprocess_behavior`` without its checks, for (N, D, T) of any length that are already clean."""
        mean = np.asarray(self.behavior_mean, dtype=np.float32)[None, :, None]
        return (behavior - mean) / np.asarray(self.behavior_std, dtype=np.float32)[None, :, None]

    def scale_counts(self, counts: np.ndarray) -> np.ndarray:
        """``preprocess_spikes`` without its checks, for windows of any length that are already clean (the live
        path's ring buffer, whose samples were sanitised on arrival)."""
        return (np.log1p(counts) / self._spike_scale()).astype(np.float32, copy=False)

    def bin_affine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The live path's per-bin maps as arrays, for the one caller that applies them to (m, C) bins itself, time-
        major (the incremental rows, ``service/live/pipeline.py``): bins -> log1p(bins) / scale (``scale_counts``),
        output -> output * std + mean (``postprocess_behavior``). Returns float32 (scale (C,) or (1,), std (D,),
        mean (D,))."""
        self._require_fitted()
        return (np.asarray(self._spike_scale(), np.float32).reshape(-1), np.asarray(self.behavior_std, np.float32),
                np.asarray(self.behavior_mean, np.float32))

    def preprocess_behavior(self, behavior: np.ndarray) -> np.ndarray:
        """(N, D, T) or (D, T) behavior in data units -> standardised float32 (N, D, T)."""
        self._require_fitted()
        return self.scale_behavior(self.as_behavior(behavior))

    def postprocess_behavior(self, z: np.ndarray) -> np.ndarray:
        """Standardised (N, D, T) model output -> behavior in data units."""
        self._require_fitted()
        mean = np.asarray(self.behavior_mean, dtype=np.float32)[None, :, None]
        std = np.asarray(self.behavior_std, dtype=np.float32)[None, :, None]
        return (np.asarray(z, dtype=np.float32) * std + mean).astype(np.float32)

    def postprocess_rates(self, y: np.ndarray) -> np.ndarray:
        """Model spike output in log1p/scale space (N, C, T) -> non-negative expected counts per bin."""
        self._require_fitted()
        return np.clip(np.expm1(np.maximum(np.asarray(y, dtype=np.float32), 0.0) * self._spike_scale()), 0.0, None)


# by hand: numpy's np.average weighs one array's mean, and nothing in numpy or scipy weighs a standard deviation
# over several arrays (days) without concatenating them
def weighted_mean(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per-column mean of rows (n, F) weighted by (n,), over several arrays."""
    return sum(w @ x for x, w in parts) / sum(w.sum() for _, w in parts)


def weighted_std(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per-column population standard deviation of weighted rows (two passes, as numpy's std)."""
    mean = weighted_mean(parts)
    return np.sqrt(sum(w @ (x - mean) ** 2 for x, w in parts) / sum(w.sum() for _, w in parts))
