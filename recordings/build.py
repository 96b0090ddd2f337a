"""Build a dataset: simulate one, or import recordings (NWB, binned ``.npz``, broadband ``.npz``) into one.

The functions the ``alignnet data`` command drives; every choice has a keyword with the command's default.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from alignnet.model.contract import DataContract
from alignnet.recordings.broadband import simulate_broadband
from alignnet.recordings.dataset import MANIFEST, DataError, Dataset, Day, atomic_savez, segment_lengths, write_dataset
from alignnet.recordings.dynamics import DynamicsConfig
from alignnet.recordings.importers import export_nwb, import_binned_npz, import_broadband, import_nwb, simday_to_day
from alignnet.recordings.simulator import SPIKE_FS, SimConfig, day_plans, simulate_day

log = logging.getLogger(__name__)
# peak memory of simulating one day, per trial and channel: a paper-scale day (1,459 trials, 64 channels) peaked at
# 9.1 GB (/usr/bin/time -v alignnet data simulate --paper-scale --workers 1)
SIM_BYTES_PER_TRIAL_CHANNEL = 100_000
FORMATS = ("nwb", "binned", "broadband", "xdf", "falcon-m1", "falcon-m2", "falcon-h1")


def sim_config(days: int = 6, trials: int = 200, seed: int = 0, paper_scale: bool = False,
               config_file: Path | None = None, drift_scale: float = 1.0, setting: str = "cortex") -> SimConfig:
    """The simulator's settings: a named setting (``cortex``, the default, or ``simple``) at the default size (or
    the paper's scale), a YAML file of task/neural/drift/dynamics sections over them, every drift magnitude
    multiplied by ``drift_scale`` (0: no drift between days)."""
    cfg = SimConfig.paper_scale(seed) if paper_scale else SimConfig(n_days=days, trials_per_day=trials, seed=seed)
    cfg.dynamics = DynamicsConfig.named(setting)
    if config_file:
        if not config_file.is_file():
            raise DataError(f"{config_file}: simulator config not found")
        over = yaml.safe_load(config_file.read_text()) or {}
        base = cfg.to_dict()
        for k, v in over.items():
            if isinstance(v, dict):
                base.setdefault(k, {}).update(v)
            else:
                base[k] = v
        cfg = SimConfig.from_dict(base)
    for k in vars(cfg.drift):
        if k != "shift_max":
            setattr(cfg.drift, k, getattr(cfg.drift, k) * drift_scale)
    return cfg


def simulate_dataset(out: Path, cfg: SimConfig, *, bin_ms: float = 20.0, smooth_ms: float | None = None,
                     window_bins: int | None = None, hop_bins: int | None = None, behavior: str = "pos",
                     nwb: bool = False, broadband_seconds: float = 0.0, snr: float = 6.0,
                     overwrite: bool = False, workers: int = 1) -> Dataset:
    """Simulate ``cfg`` and write it as a dataset (2-s windows by default, as in the paper); optionally also NWB
    files per day and 30-kHz broadband of day 0. ``workers`` > 1 simulates that many days at once in worker
    processes (0: as many as cores, days and memory allow); the dataset is the same for any number."""
    if (out / MANIFEST).exists() and not overwrite:
        raise DataError(f"{out}: a dataset already exists here; pass --overwrite to replace it")
    bin_s = bin_ms / 1000
    smooth_s = (smooth_ms if smooth_ms is not None else 2 * bin_ms) / 1000
    if workers < 0:
        raise DataError(f"--workers must be 0 (auto) or more, got {workers}")
    workers = workers or auto_sim_workers(cfg)
    jobs = ((cfg, d, pop, seq, out, bin_s, smooth_s, nwb, broadband_seconds, snr) for d, pop, seq in day_plans(cfg))
    days = tqdm(in_order(simulate_binned_day, jobs, workers), total=cfg.n_days, unit="day",
                desc=f"simulating days ({workers} worker{'s' * (workers > 1)})")
    window = window_bins or max(2, int(round(2.0 / bin_s)))
    contract = DataContract(n_channels=cfg.neural.n_channels, bin_s=bin_s, window_bins=window,
                            behavior_kind=behavior)
    return write_dataset(out, days, subject=cfg.subject, source="alignnet simulator", contract=contract,
                         units_matched=True, overwrite=overwrite,
                         extra={"default_hop_bins": hop_bins or max(1, window // 10), "simulator": cfg.to_dict()})


def simulate_binned_day(cfg: SimConfig, index: int, pop, seq, out: Path, bin_s: float, smooth_s: float, nwb: bool,
                        broadband_seconds: float, snr: float) -> Day:
    """One simulated day, binned (and its NWB file and broadband written where asked): the work of one worker."""
    sd = simulate_day(pop, cfg, cfg.trials_per_day, np.random.default_rng(seq), index=index)
    if nwb:
        export_nwb(sd, out / "nwb" / f"day{sd.index:03d}.nwb", subject=cfg.subject)
    if broadband_seconds > 0 and sd.index == 0:
        write_broadband(sd, out / "broadband" / "day000.npz", broadband_seconds, snr, cfg.seed)
    return simday_to_day(sd, bin_s, smooth_s)


def auto_sim_workers(cfg: SimConfig) -> int:
    """As many workers as cores and days, fewer where memory is short: a day's 1-ms rates and draws take about
    ``SIM_BYTES_PER_TRIAL_CHANNEL`` per trial and channel while it is simulated."""
    per_day = cfg.trials_per_day * cfg.neural.n_channels * SIM_BYTES_PER_TRIAL_CHANNEL
    free = available_memory()
    fit = max(1, int(free * 0.8 // per_day)) if free else cfg.n_days
    return max(1, min(os.cpu_count() or 1, cfg.n_days, fit))


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none: not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def in_order(fn, jobs: Iterable[tuple], workers: int) -> Iterator:
    """``fn(*job)`` for each job, yielded in the jobs' order; with ``workers`` > 1 in that many processes, at most
    one job waiting beyond those running, so finished results are read as they come instead of piling up."""
    if workers <= 1:
        for job in jobs:
            yield fn(*job)
        return
    # spawn, not fork: the parent may hold threads (tqdm's monitor, torch's pools) that a forked child inherits
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(fn, *job))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer stopped early or a day failed: cancel what has not started
            for f in pending:
                f.cancel()


def write_broadband(sd, path: Path, seconds: float, snr: float, seed: int) -> None:
    """The first ``seconds`` of a simulated day as 30-kHz broadband, with the true spikes for scoring."""
    n = int(seconds * SPIKE_FS)
    keep = sd.spike_samples < n
    x = simulate_broadband(sd.spike_samples[keep], sd.spike_channels[keep], sd.n_channels, n, snr=snr, seed=seed)
    atomic_savez(path, broadband=x, fs=np.float64(SPIKE_FS), behavior=sd.behavior[: int(seconds * 1000)],
                 behavior_fs=np.float64(1000.0), spike_samples=sd.spike_samples[keep],
                 spike_channels=sd.spike_channels[keep])


def detect_format(path: Path) -> str:
    """'nwb', 'broadband' or 'binned', from the extension and the archive's keys."""
    if path.suffix == ".nwb":
        return "nwb"
    if path.suffix.lower() == ".xdf":
        return "xdf"
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return "broadband" if "broadband" in z.files else "binned"
        except Exception as e:
            raise DataError(f"{path}: not a readable .npz archive ({e})") from e
    raise DataError(f"{path}: unknown format (expected .nwb, .xdf or .npz); pass --format")


def recording_files(paths: list[Path], pattern: str = "*") -> list[Path]:
    """Files (one per day) from files and folders (every .nwb/.xdf/.npz inside matching ``pattern``)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.glob(pattern) if f.suffix.lower() in (".nwb", ".npz", ".xdf"))
            if not found:
                raise DataError(f"{p}: no .nwb, .xdf or .npz files matching {pattern!r}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: file not found")
    return files


def import_day(path: Path, fmt: str = "auto", *, bin_ms: float | None = None, smooth_ms: float | None = None,
               behavior_name: str | None = None, threshold: float = 4.5, spike_stream: str | None = None,
               behavior_stream: str | None = None) -> Day:
    """One recording file -> one day. Spike times and broadband are binned at ``bin_ms`` (default 20 ms) with
    behavior smoothed over 2 bins by default; already-binned files keep their bins and are not smoothed unless
    ``smooth_ms`` is given."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt.startswith("falcon-"):  # FALCON's own loader and 20-ms bins
        from alignnet.recordings.falcon import import_falcon

        return import_falcon(path, fmt.split("-", 1)[1])
    if fmt == "xdf":  # keeps a stream of counts' own bins unless bin_ms asks for wider ones
        from alignnet.recordings.xdf import import_xdf

        return import_xdf(path, bin_ms / 1000 if bin_ms else None, smooth_ms / 1000 if smooth_ms is not None else
                          None, spikes=spike_stream, behavior=behavior_stream)
    bin_s = (bin_ms or 20.0) / 1000
    if fmt == "binned":
        day = import_binned_npz(path, smooth_s=(smooth_ms or 0.0) / 1000)
        if bin_ms and abs(day.bin_s - bin_s) > 1e-9:
            raise DataError(f"{path}: already binned at {day.bin_s * 1000:g} ms; re-binning to {bin_ms:g} ms is not "
                            "supported")
        return day
    smooth_s = (smooth_ms if smooth_ms is not None else 2 * bin_s * 1000) / 1000
    if fmt == "nwb":
        return import_nwb(path, bin_s, smooth_s, behavior_name=behavior_name)
    return import_broadband(path, bin_s, smooth_s, threshold=threshold)


def window_defaults(days: list[Day], bin_s: float, window_bins: int | None = None,
                    hop_bins: int | None = None) -> tuple[int, int]:
    """2-s windows (at most 100 bins), or the median segment length where segments are shorter (real recordings
    that kept only each trial's movement), so most segments hold a window. The hop defaults to a tenth of the
    window."""
    window = window_bins
    if window is None:
        window = int(max(2, min(100, round(2.0 / bin_s), np.median(segment_lengths(days)))))
    return window, hop_bins or max(1, window // 10)


def import_dataset(paths: list[Path], out: Path, *, fmt: str = "auto", pattern: str = "*",
                   subject: str | None = None, units_matched: bool = False, behavior: str = "pos",
                   bin_ms: float | None = None, smooth_ms: float | None = None, window_bins: int | None = None,
                   hop_bins: int | None = None, behavior_name: str | None = None, threshold: float = 4.5,
                   overwrite: bool = False, spike_stream: str | None = None,
                   behavior_stream: str | None = None) -> Dataset:
    """Import one recording per day into a dataset. ``units_matched`` records that channels mean the same
    electrode every day (arrays, not sorted units); otherwise each day is read through its own read-in."""
    files = recording_files(paths, pattern)
    days = [import_day(f, fmt, bin_ms=bin_ms, smooth_ms=smooth_ms, behavior_name=behavior_name, threshold=threshold,
                       spike_stream=spike_stream, behavior_stream=behavior_stream)
            for f in tqdm(files, desc="importing", unit="day")]
    for f, d in zip(files, days):
        check_behavior(d, f, behavior)
    bins = {d.bin_s for d in days}
    if len(bins) > 1:
        raise DataError(f"days have different bin widths ({', '.join(f'{b * 1000:g} ms' for b in sorted(bins))}): "
                        "import them into separate datasets")
    bin_s = bins.pop()
    counts = {d.n_channels for d in days}
    if units_matched and len(counts) > 1:
        raise DataError(f"--units-matched, but days have different channel counts: {sorted(counts)}")
    window, hop = window_defaults(days, bin_s, window_bins, hop_bins)
    contract = DataContract(n_channels=max(counts), bin_s=bin_s, window_bins=window, behavior_kind=behavior,
                            units_matched=units_matched, extra={"channels_per_day": [d.n_channels for d in days]})
    return write_dataset(out, days, subject=subject or _common_prefix([f.stem for f in files]) or "unknown",
                         source=", ".join(str(f) for f in files), contract=contract, units_matched=units_matched,
                         overwrite=overwrite, extra={"default_hop_bins": hop})


def check_behavior(day: Day, path: Path, behavior: str) -> None:
    """Refuse a day whose decoded behavior never varies (nothing to learn, R² undefined); warn when only some of its
    dimensions vary, or when the other kind is constant (e.g. an all-zero pos beside a real vel)."""
    used = day.behavior(behavior)
    flat = np.ptp(used, axis=0) == 0 if len(used) else np.ones(used.shape[1], bool)
    if flat.all():
        raise DataError(f"{path} (day {day.name}): behavior '{behavior}' is constant in every dimension; nothing to "
                        "decode (is it the right --behavior?)")
    if flat.any():
        log.warning("%s (day %s): behavior '%s' dimension(s) %s never change", path, day.name, behavior,
                    ", ".join(str(i) for i in np.flatnonzero(flat)))
    other = "vel" if behavior == "pos" else "pos"
    derived = set(day.extra.get("derived_behavior", np.zeros(0, str)).tolist())
    if other not in derived and np.ptp(day.behavior(other), axis=0).max(initial=0) == 0:
        log.warning("%s (day %s): '%s' is constant (all %g); only '%s' carries behavior", path, day.name, other,
                    float(day.behavior(other).flat[0]) if day.behavior(other).size else 0.0, behavior)


def _common_prefix(names: list[str]) -> str:
    prefix = names[0].split("-")[0] if names else ""
    return prefix if all(n.startswith(prefix) for n in names) else ""
