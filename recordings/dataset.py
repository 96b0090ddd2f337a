"""The canonical on-disk dataset: one ``.npz`` per day plus ``manifest.json`` (subject, days, contract).

Layout::

    DATASET/
      manifest.json          format version, subject, source, units_matched, contract, one entry per day
      days/<name>.npz        counts (bins, C) uint16, pos/vel (bins, D) float32, trial_id, segment_id,
                             target (bins,), time_s (bins,) bin starts, plus truth_* arrays for simulated days

Bins are in time order. ``segment_id`` changes wherever there is a gap in time (between trials of a recording that
kept only movement periods, or between recordings); windows never span a change unless asked.
Files are written atomically (temporary file, then rename), so an interrupted write never leaves half a dataset.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignnet.model.atomic import atomic_path, atomic_write_bytes, atomic_write_json  # noqa: F401  (re-exported)
from alignnet.model.contract import DataContract
from alignnet.recordings.checks import DataError, check_counts, check_manifest, read_npz, scalar_seconds
from alignnet.recordings.preprocess import gather_windows, window_starts

log = logging.getLogger(__name__)

DATASET_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_DATASET = Path("data/sim-default")  # where `alignnet data simulate` writes by default
MIN_TRIALS = 10  # a day with fewer recorded trials is split by time: its bins are cut into TIME_BLOCKS blocks
TIME_BLOCKS = 50  # pseudo-trials of a continuous session (each 2 % of it), so splits by "trial" split by time


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


@dataclass
class Day:
    """One recording day on the bin grid."""

    name: str
    bin_s: float
    counts: np.ndarray  # (n_bins, C) spike counts
    pos: np.ndarray  # (n_bins, D) position (smoothed)
    vel: np.ndarray  # (n_bins, D) velocity
    trial_id: np.ndarray  # (n_bins,) int
    segment_id: np.ndarray  # (n_bins,) int, changes at every gap
    target: np.ndarray  # (n_bins,) int, -1 where unknown
    time_s: np.ndarray  # (n_bins,) start time of each bin
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. truth_* arrays of simulated days
    _float32: dict[str, tuple] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()
        self._time_blocks()

    @property
    def split_by(self) -> str:
        """"trial" when the day's own trials are its units of splitting, "time" when it had too few (see
        MIN_TRIALS) and its bins were cut into contiguous time blocks."""
        return "time" if "recorded_trial_id" in self.extra else "trial"

    def _time_blocks(self) -> None:
        """A continuous session (fewer than MIN_TRIALS trials) gets TIME_BLOCKS contiguous blocks of bins as its
        trial ids, so every split by trials splits it by time; the recorded ids stay in ``extra``."""
        if self.split_by == "time" or self.n_trials >= MIN_TRIALS or self.n_bins < 2 * TIME_BLOCKS:
            return
        self.extra["recorded_trial_id"] = self.trial_id
        self.trial_id = (np.arange(self.n_bins) * TIME_BLOCKS // self.n_bins).astype(np.int32)

    @property
    def n_bins(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.counts.shape[1])

    @property
    def n_trials(self) -> int:
        return int(np.unique(self.trial_id).size)

    def float_series(self, behavior: str = "pos") -> tuple[np.ndarray, np.ndarray]:
        """Counts and ``behavior`` as float32 (n_bins, F), made once and kept: every set of windows cut from the
        day shares them."""
        if behavior not in self._float32:
            self._float32[behavior] = (self.counts.astype(np.float32), self.behavior(behavior).astype(np.float32))
        return self._float32[behavior]

    def behavior(self, kind: str = "pos") -> np.ndarray:
        if kind not in ("pos", "vel"):
            raise ValueError(f"behavior kind must be 'pos' or 'vel', got {kind!r}")
        return self.pos if kind == "pos" else self.vel

    def validate(self, source: str | Path | None = None) -> None:
        where = f"{source}: " if source else f"day {self.name}: "
        if self.counts.ndim != 2:
            raise DataError(f"{where}spike counts must be (bins, channels), got shape {self.counts.shape}")
        n = self.counts.shape[0]
        for key in ("pos", "vel"):
            arr = getattr(self, key)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise DataError(
                    f"{where}spikes have {n} bins but behavior '{key}' has shape {arr.shape}: "
                    "spikes and behavior must cover the same bins"
                )
            if not np.all(np.isfinite(arr)):
                bad = int((~np.isfinite(arr)).any(axis=1).sum())
                raise DataError(f"{where}behavior '{key}' has NaN or infinite values in {bad} bins")
        for key in ("trial_id", "segment_id", "target", "time_s"):
            arr = getattr(self, key)
            if arr.shape != (n,):
                raise DataError(f"{where}'{key}' must have one value per bin ({n}), got shape {arr.shape}")
        if n == 0 or self.counts.shape[1] == 0:
            raise DataError(f"{where}the day holds no bins or no channels (spike counts of shape "
                            f"{self.counts.shape})")
        check_counts(self.counts, self.bin_s, where)

    # ---- I/O ---------------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        if self.counts.max(initial=0) > np.iinfo(np.uint16).max:
            raise DataError(f"day {self.name}: a bin holds more than 65535 spikes; use a smaller bin width")
        atomic_savez(
            path, counts=self.counts.astype(np.uint16), pos=self.pos.astype(np.float32),
            vel=self.vel.astype(np.float32), trial_id=self.trial_id.astype(np.int32),
            segment_id=self.segment_id.astype(np.int32), target=self.target.astype(np.int16),
            time_s=self.time_s.astype(np.float64), bin_s=np.float64(self.bin_s), name=np.str_(self.name),
            **self.extra,
        )

    @classmethod
    def load(cls, path: Path) -> Day:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: day file not found")
        arrays = read_npz(path)
        required = ("counts", "pos", "vel", "trial_id", "segment_id", "target", "time_s", "bin_s", "name")
        missing = [k for k in required if k not in arrays]
        if missing:
            raise DataError(f"{path}: day file lacks {', '.join(missing)}")
        extra = {k: v for k, v in arrays.items() if k not in required}
        day = cls.__new__(cls)
        day.name, day.bin_s = str(arrays["name"]), scalar_seconds(arrays["bin_s"], f"{path}: bin_s")
        day.counts, day.pos, day.vel = arrays["counts"], arrays["pos"], arrays["vel"]
        day.trial_id, day.segment_id = arrays["trial_id"], arrays["segment_id"]
        day.target, day.time_s, day.extra, day._float32 = arrays["target"], arrays["time_s"], extra, {}
        day.validate(path)
        day._time_blocks()
        return day

    # ---- windows -----------------------------------------------------------------------------------------------
    def window_starts(self, window_bins: int, hop_bins: int, cross_segments: bool = False) -> np.ndarray:
        return window_starts(self.segment_id, window_bins, hop_bins, cross_segments)

    def windows(
        self, window_bins: int, hop_bins: int, behavior: str = "pos", cross_segments: bool = False,
        starts: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """counts (N, C, T) float32, behavior (N, D, T) float32, and the trial ids of each window (N, T)."""
        if starts is None:
            starts = self.window_starts(window_bins, hop_bins, cross_segments)
        counts = gather_windows(self.counts.astype(np.float32), starts, window_bins)
        beh = gather_windows(self.behavior(behavior).astype(np.float32), starts, window_bins)
        trials = gather_windows(self.trial_id[:, None], starts, window_bins)[:, 0, :]
        return counts, beh, trials


class Dataset:
    """A dataset folder: manifest plus days, loaded lazily."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            hint = " (make one with `alignnet data simulate` or `alignnet data import`)"
            raise DataError(f"{path}: no dataset manifest here{hint}")
        try:
            self.manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: manifest is not valid JSON ({e})") from e
        if not isinstance(self.manifest, dict):
            raise DataError(f"{path}: the manifest must be a JSON object, got a {type(self.manifest).__name__}")
        version = self.manifest.get("format_version")
        if version != DATASET_FORMAT_VERSION:
            raise DataError(
                f"{path}: dataset format version {version!r} is not supported (this alignnet reads "
                f"{DATASET_FORMAT_VERSION}); re-import or re-simulate the data"
            )
        check_manifest(self.manifest, self.root, path)
        self._cache: dict[int, Day] = {}

    @property
    def days(self) -> list[dict[str, Any]]:
        return self.manifest["days"]

    @property
    def day_names(self) -> list[str]:
        return [d["name"] for d in self.days]

    @property
    def subject(self) -> str:
        return self.manifest.get("subject", "unknown")

    @property
    def units_matched(self) -> bool:
        """True when channel k means the same electrode on every day (simulated arrays); False for sorted units."""
        return bool(self.manifest.get("units_matched", False))

    def contract(self, **overrides: Any) -> DataContract:
        """The dataset's data contract (not yet fitted), with ``units_matched`` as the manifest records it."""
        c = dict(self.manifest["contract"])
        c["units_matched"] = self.units_matched
        c.update(overrides)
        return DataContract.from_dict(c)

    def __len__(self) -> int:
        return len(self.days)

    def day_index(self, key: int | str) -> int:
        if isinstance(key, str):
            if key in self.day_names:
                return self.day_names.index(key)
            try:
                key = int(key)
            except ValueError:
                raise DataError(f"{self.root}: no day named {key!r}; days are {', '.join(self.day_names)}") from None
        if not -len(self) <= key < len(self):
            raise DataError(f"{self.root}: day index {key} out of range (dataset has {len(self)} days)")
        return key % len(self)

    def day(self, key: int | str) -> Day:
        i = self.day_index(key)
        if i not in self._cache:
            path = self.root / self.days[i]["file"]
            day = Day.load(path)
            c = self.manifest["contract"]
            if self.units_matched and day.n_channels != c["n_channels"]:
                raise DataError(f"{path}: holds {day.n_channels} channels but the manifest's contract says "
                                f"{c['n_channels']} matched channels; re-import the dataset")
            if not math.isclose(day.bin_s, c["bin_s"], rel_tol=1e-6):
                raise DataError(f"{path}: bins of {day.bin_s:g} s but the manifest's contract says {c['bin_s']:g} s")
            self._cache[i] = day
        return self._cache[i]


def fit_hop(hop_bins: int, window_bins: int) -> int:
    """A configured hop, unless it exceeds half the window: then a fifth of the window. The configs' 20-bin hop
    suits 100-bin windows but would leave a recording with 5-bin windows almost no training windows."""
    hop = int(hop_bins)
    return hop if hop <= window_bins // 2 else max(1, window_bins // 5)


def segment_lengths(days: Iterable[Day]) -> np.ndarray:
    """Bins of every segment (run of bins without a gap) of the days, pooled."""
    return np.concatenate([np.unique(d.segment_id, return_counts=True)[1] for d in days])


def short_segments(data: Dataset | Day, window_bins: int, days: list[int] | None = None) -> bool:
    """True when most segments (runs of bins without a gap) of the day or days hold less than two windows:
    recordings that kept only each trial's movement, whose windows concatenate movement periods (a window still
    never mixes training and test trials)."""
    chosen = [data] if isinstance(data, Day) else [data.day(d) for d in (range(len(data)) if days is None else days)]
    return bool(np.median(segment_lengths(chosen)) < 2 * window_bins)


def write_dataset(
    root: str | Path, days: Iterable[Day], *, subject: str, source: str, contract: DataContract, units_matched: bool,
    extra: dict[str, Any] | None = None, overwrite: bool = False,
) -> Dataset:
    """Write days (any iterable: each is saved as it comes, so a long recording never sits in memory whole) and the
    manifest. The manifest is written last, so a dataset is complete once it exists."""
    root = Path(root)
    if (root / MANIFEST).exists() and not overwrite:
        raise DataError(f"{root}: a dataset already exists here; pass --overwrite to replace it")
    contract = DataContract.from_dict({**contract.to_dict(), "units_matched": units_matched})
    entries = []
    for day in days:
        if day.name in {e["name"] for e in entries}:
            raise DataError(f"{root}: day names must be unique; {day.name!r} appears twice")
        rel = f"days/{day.name}.npz"
        day.save(root / rel)
        entries.append(day_entry(day, rel))
    if not entries:
        raise DataError(f"{root}: no days to write")
    manifest = {
        "format_version": DATASET_FORMAT_VERSION,
        "subject": subject,
        "source": source,
        "units_matched": units_matched,
        "contract": contract.to_dict(),
        "days": entries,
        **(extra or {}),
    }
    atomic_write_json(root / MANIFEST, manifest)
    return Dataset(root)


def day_entry(day: Day, rel: str) -> dict[str, Any]:
    rates = day.counts.mean(axis=0) / day.bin_s
    return {
        "name": day.name,
        "file": rel,
        "n_bins": day.n_bins,
        "n_channels": day.n_channels,
        "n_trials": day.n_trials,
        "n_segments": int(np.unique(day.segment_id).size),
        "duration_s": round(day.n_bins * day.bin_s, 3),
        "mean_rate_hz": round(float(rates.mean()), 3),
    }
