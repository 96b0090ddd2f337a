"""The evaluation's settings (``EvalConfig``, the ``evaluate`` section of a config), one model's result row, and
the protocols and days that fit a dataset (``fit_days``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignnet.training.probes import check_probes
from alignnet.training.trainer import TrainConfig

PROTOCOLS = ("single-day", "cross-day", "pretrain")


@dataclass
class EvalConfig:
    hop_bins: int | None = None  # window hop (default: the dataset's)
    window_bins: int | None = None  # window length (default: the dataset's)
    cross_segments: bool | None = None  # concatenate movement periods into windows (None: when segments are short)
    behavior: str | None = None  # pos | vel (default: the dataset's)
    single_day: int = 0  # day of the single-day protocol
    cross_train_days: list[int] = field(default_factory=lambda: [0, 1])  # labelled days of cross-day
    cross_test_day: int = 2  # held-out day
    pretrain_test_day: int | None = None  # many-days protocol: test day, trained on every day before it (None: last)
    calib_fraction: float = 0.0  # labelled slice of the new day (first trials); required where units differ
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    model_channels: int = 64  # model channel space when units differ across days (read-ins map to it)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-model config overrides
    model_train: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-model training overrides (e.g. lr)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig for baselines and AlignNet fine-tuning
    pretrain: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for AlignNet pretraining
    readin: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for fitting a new day's read-in
    online_seconds: float | None = None  # newest-bin R² on at most this much of the test range (None: all of it)
    # newest-bin R² again under each probe of what AlignNet's decode reads (training/probes.py: latent-mean,
    # skips-zero), kept in each AlignNet row's details["probes"]
    probes: list[str] = field(default_factory=list)
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalConfig:
        valid = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown evaluation setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        for key in ("train", "pretrain", "readin"):
            TrainConfig.check_keys(d.get(key) or {}, f"evaluate.{key}")
        for name, own in (d.get("model_train") or {}).items():
            TrainConfig.check_keys(own or {}, f"evaluate.model_train.{name}")
        check_probes(list(d.get("probes") or []))
        return cls(**d)


@dataclass
class ModelResult:
    model: str
    s2b_r2: float
    b2s_r: float | None  # None for a decode-only yardstick
    train_s: float
    parameters: int
    online_r2: float | None = None  # newest-bin R²: the test range streamed bin by bin, as it is served
    causal: bool = False  # the decoded value of a bin depends on no later bin
    rate_r: float | None = None  # B->S r against the simulator's true rates (simulated data only)
    psth_r: float | None = None  # B->S r of trial-averaged PSTHs (vs true rates when simulated, else vs counts)
    details: dict[str, Any] = field(default_factory=dict)


STOCK_CROSS = ([0, 1], 2)  # the configs' cross-day days; fitted to smaller datasets, any other choice is checked


def fit_days(cfg: EvalConfig, n_days: int, protocols: list[str], matched: bool = True) -> tuple[list[str], list[str]]:
    """Protocols and days that fit a dataset of ``n_days``: "auto" is single-day plus cross-day where there are two
    days or more; the stock cross-day days (train 0, 1, test 2) shrink to train 0, test 1 on a two-day dataset.
    Units that differ by day need a labelled slice of the new day for its read-in: the first 10 % of its trials
    unless ``calib_fraction`` says otherwise. A protocol asked for by name that needs days the dataset lacks is a
    clear error. Returns (protocols, notes)."""
    notes = []
    if protocols == ["auto"]:
        protocols = ["single-day", "cross-day"] if n_days >= 2 else ["single-day"]
        if n_days < 2:
            notes.append("one recording day: single-day protocol only (cross-day needs two days or more)")
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"unknown protocol {p!r}; choose from auto, {', '.join(PROTOCOLS)}")
    if n_days < 2 and {"cross-day", "pretrain"} & set(protocols):
        raise ValueError(f"the cross-day and pretrain protocols need two recording days or more; this dataset has "
                         f"{n_days} (use --protocol single-day)")
    if "cross-day" in protocols and (cfg.cross_train_days, cfg.cross_test_day) == STOCK_CROSS and n_days == 2:
        cfg.cross_train_days, cfg.cross_test_day = [0], 1
        notes.append("two recording days: cross-day trains on day 0 and tests on day 1")
    if not matched and cfg.calib_fraction <= 0 and {"cross-day", "pretrain"} & set(protocols):
        cfg.calib_fraction = 0.1
        notes.append("units differ by day: the new day's first 10 % of trials are labelled to fit its read-in")
    if cfg.single_day >= n_days and "single-day" in protocols:
        raise ValueError(f"single_day is day index {cfg.single_day}, but the dataset has {n_days} days")
    used = [cfg.cross_test_day, *cfg.cross_train_days] if "cross-day" in protocols else []
    if max(used, default=0) >= n_days:
        raise ValueError(f"cross-day uses day index {max(used)} (cross_train_days {cfg.cross_train_days}, "
                         f"cross_test_day {cfg.cross_test_day}), but the dataset has {n_days} days")
    return protocols, notes
