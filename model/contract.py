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
                setattr(self, name, [float(v) for v in arr])

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
        return self.spike_scale is not None and self.behavior_mean is not None and self.behavior_std is not None

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
        return cls(**d)

    # ---- normalisation -------------------------------------------------------------------------------------
    def fit(self, counts: np.ndarray, behavior: np.ndarray) -> DataContract:
        """Fit normalisation statistics on training windows: counts (N, C, T), behavior (N, D, T)."""
        counts = np.asarray(counts, dtype=np.float64)
        behavior = np.asarray(behavior, dtype=np.float64)
        self.check_spikes(counts)
        self.check_behavior(behavior)
        scale = np.log1p(counts).std(axis=(0, 2))
        self.spike_scale = [float(s) if s > 1e-6 else 1.0 for s in scale]
        self.behavior_mean = [float(v) for v in behavior.mean(axis=(0, 2))]
        std = behavior.std(axis=(0, 2))
        self.behavior_std = [float(s) if s > 1e-9 else 1.0 for s in std]
        return self

    def check_spikes(self, counts: np.ndarray) -> None:
        """Raise ValueError naming the problem unless counts is (N, C, T) of finite, non-negative numbers."""
        counts = np.asarray(counts)
        if counts.ndim != 3 or counts.shape[1:] != self.spike_shape:
            raise ValueError(
                f"spike windows must have shape (batch, {self.n_channels}, {self.window_bins}) "
                f"(channels x bins), got {tuple(counts.shape)}"
            )
        if not np.issubdtype(counts.dtype, np.number) or np.issubdtype(counts.dtype, np.complexfloating):
            raise ValueError(f"spike counts must be real numbers, got dtype {counts.dtype}")
        if not np.all(np.isfinite(counts)):
            raise ValueError("spike counts contain NaN or infinite values")
        if np.any(counts < 0):
            raise ValueError("spike counts must be non-negative")

    def check_behavior(self, behavior: np.ndarray) -> None:
        """Raise ValueError naming the problem unless behavior is (N, D, T) of finite numbers."""
        behavior = np.asarray(behavior)
        if behavior.ndim != 3 or behavior.shape[1:] != self.behavior_shape:
            raise ValueError(
                f"behavior windows must have shape (batch, {self.behavior_dims}, {self.window_bins}), "
                f"got {tuple(behavior.shape)}"
            )
        if not np.issubdtype(behavior.dtype, np.number) or np.issubdtype(behavior.dtype, np.complexfloating):
            raise ValueError(f"behavior must be real numbers, got dtype {behavior.dtype}")
        if not np.all(np.isfinite(behavior)):
            raise ValueError("behavior contains NaN or infinite values")

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError("the data contract has no normalisation statistics yet: call fit() on training data")

    def preprocess_spikes(self, counts: np.ndarray) -> np.ndarray:
        """(N, C, T) counts -> (N, C, T) float32 model input: log1p(counts) / per-channel scale."""
        self._require_fitted()
        self.check_spikes(counts)
        scale = np.asarray(self.spike_scale, dtype=np.float32)[None, :, None]
        return (np.log1p(np.asarray(counts, dtype=np.float32)) / scale).astype(np.float32)

    def preprocess_behavior(self, behavior: np.ndarray) -> np.ndarray:
        """(N, D, T) behavior in data units -> standardised float32."""
        self._require_fitted()
        self.check_behavior(behavior)
        mean = np.asarray(self.behavior_mean, dtype=np.float32)[None, :, None]
        std = np.asarray(self.behavior_std, dtype=np.float32)[None, :, None]
        return ((np.asarray(behavior, dtype=np.float32) - mean) / std).astype(np.float32)

    def postprocess_behavior(self, z: np.ndarray) -> np.ndarray:
        """Standardised (N, D, T) model output -> behavior in data units."""
        self._require_fitted()
        mean = np.asarray(self.behavior_mean, dtype=np.float32)[None, :, None]
        std = np.asarray(self.behavior_std, dtype=np.float32)[None, :, None]
        return (np.asarray(z, dtype=np.float32) * std + mean).astype(np.float32)

    def postprocess_rates(self, y: np.ndarray) -> np.ndarray:
        """Model spike output in log1p/scale space (N, C, T) -> non-negative expected counts per bin."""
        self._require_fitted()
        scale = np.asarray(self.spike_scale, dtype=np.float32)[None, :, None]
        return np.clip(np.expm1(np.maximum(np.asarray(y, dtype=np.float32), 0.0) * scale), 0.0, None)
