"""``alignnet data simulate | import | info``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from model.contract import DataContract
from training.data import MANIFEST, DataError, Dataset, atomic_savez, write_dataset
from training.importers import (
    export_nwb,
    import_binned_npz,
    import_broadband,
    import_nwb,
    simday_to_day,
)
from training.simulator import SPIKE_FS, SimConfig, simulate_broadband, simulate_days
from training.summary import day_summary, drift_summary, format_table

DEFAULT_DATASET = Path("data/sim-default")


def add_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="simulate, import and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = dsub.add_parser(
        "simulate", help="simulate a multi-day M1 center-out recording (the embedded default dataset)",
        description="Simulate a macaque M1 population (64 channels) in an 8-target center-out joystick task over "
        "several days with drift between days, and write it as a canonical dataset.",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_DATASET, help="dataset folder to write (default: %(default)s)")
    p.add_argument("--days", type=int, default=6, help="number of recording days (default: %(default)s)")
    p.add_argument("--trials", type=int, default=200, help="trials per day (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data (default: %(default)s)")
    p.add_argument("--paper-scale", action="store_true",
                   help="22 days and 32,083 trials as in the paper (overrides --days/--trials; a few minutes)")
    p.add_argument("--config", type=Path, help="YAML file of simulator settings (task, neural, drift sections)")
    p.add_argument("--drift-scale", type=float, default=1.0,
                   help="multiply every drift magnitude (0 = no drift between days; default: %(default)s)")
    _add_binning(p)
    p.add_argument("--nwb", action="store_true", help="also write each day as NWB (nwb/dayNNN.nwb)")
    p.add_argument("--broadband-seconds", type=float, default=0.0,
                   help="also write this many seconds of 30-kHz broadband of day 0 with spike waveforms in noise "
                        "(broadband/day000.npz), input for `alignnet data import --format broadband`")
    p.add_argument("--snr", type=float, default=6.0, help="spike trough / noise std of the broadband (default: 6)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.set_defaults(func=cmd_simulate)

    p = dsub.add_parser(
        "import", help="import recordings (NWB, binned .npz, broadband .npz) into a canonical dataset",
        description="Import one recording per day. Formats: 'nwb' (Units table or threshold-crossing TimeSeries + "
        "a behavior SpatialSeries/TimeSeries), 'binned' (the layout of ../shared/data/real: spike_counts, pos, "
        "vel, trial_id, timestep, target, bin_size_s), 'broadband' (.npz with broadband, fs, behavior, "
        "behavior_fs). A folder imports every file in it that matches --pattern.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="files (one per day) or folders")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--format", choices=("auto", "nwb", "binned", "broadband"), default="auto",
                   help="input format; auto decides from the extension and keys (default: auto)")
    p.add_argument("--pattern", default="*", help="glob for files inside folders (default: all .nwb/.npz)")
    p.add_argument("--subject", default=None, help="subject name for the manifest (default: from the files)")
    p.add_argument("--behavior-name", default=None, help="NWB: name of the behavior TimeSeries to use")
    p.add_argument("--units-matched", action="store_true",
                   help="channels mean the same electrode every day (arrays, not sorted units)")
    p.add_argument("--threshold", type=float, default=4.5, help="broadband: threshold in noise stds (default: 4.5)")
    _add_binning(p, bin_default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.set_defaults(func=cmd_import)

    p = dsub.add_parser("info", help="per-day summary and drift summary of a dataset",
                        description="Print days, trials, windows, firing rates, a within-day ridge R² and, when "
                        "channels match across days, a drift summary against the first day.")
    p.add_argument("dataset", type=Path, nargs="?", default=DEFAULT_DATASET, help="dataset folder")
    p.add_argument("--hop-bins", type=int, default=None, help="window hop for counting windows (default: manifest)")
    p.add_argument("--behavior", choices=("pos", "vel"), default=None, help="behavior for R² (default: contract)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary as JSON here")
    p.set_defaults(func=cmd_info)


def _add_binning(p: argparse.ArgumentParser, bin_default: float | None = 20.0) -> None:
    p.add_argument("--bin-ms", type=float, default=bin_default,
                   help="bin width in ms" + (" (default: %(default)s)" if bin_default else
                                             " (default: the file's own bins, or 20 for spike times)"))
    p.add_argument("--smooth-ms", type=float, default=None,
                   help="std of the Gaussian smoothing of behavior in ms (default: 2 bins for spike-time data, "
                        "none for already-binned data)")
    p.add_argument("--window-bins", type=int, default=None,
                   help="bins per model window (default: simulate 2 s; import 100 for 20-ms bins, else the median "
                        "segment length)")
    p.add_argument("--hop-bins", type=int, default=None, help="default hop between windows (default: 10%% of a window)")
    p.add_argument("--behavior", choices=("pos", "vel"), default="pos", help="behavior the model decodes")


def _window_defaults(args: argparse.Namespace, days, bin_s: float) -> tuple[int, int]:
    window = args.window_bins
    if window is None:
        if abs(bin_s - 0.02) < 1e-9:
            window = 100
        else:  # short trials (real data): the median segment, so most segments hold a window
            lengths = np.concatenate([np.bincount(d.segment_id) for d in days])
            window = int(max(2, min(100, np.median(lengths))))
    hop = args.hop_bins or max(1, window // 10)
    return window, hop


def cmd_simulate(args: argparse.Namespace) -> int:
    if (args.out / MANIFEST).exists() and not args.overwrite:
        raise DataError(f"{args.out}: a dataset already exists here; pass --overwrite to replace it")
    cfg = SimConfig.paper_scale(args.seed) if args.paper_scale else SimConfig(
        n_days=args.days, trials_per_day=args.trials, seed=args.seed)
    if args.config:
        if not args.config.is_file():
            raise DataError(f"{args.config}: simulator config not found")
        over = yaml.safe_load(args.config.read_text()) or {}
        base = cfg.to_dict()
        for k, v in over.items():
            if isinstance(v, dict):
                base.setdefault(k, {}).update(v)
            else:
                base[k] = v
        cfg = SimConfig.from_dict(base)
    for k in vars(cfg.drift):
        if k != "shift_max":
            setattr(cfg.drift, k, getattr(cfg.drift, k) * args.drift_scale)
    bin_s = args.bin_ms / 1000
    smooth_s = (args.smooth_ms if args.smooth_ms is not None else 2 * args.bin_ms) / 1000

    def days():
        for sd in simulate_days(cfg, progress=True):
            if args.nwb:
                export_nwb(sd, args.out / "nwb" / f"day{sd.index:03d}.nwb", subject=cfg.subject)
            if args.broadband_seconds > 0 and sd.index == 0:
                write_broadband(sd, args.out / "broadband" / "day000.npz", args.broadband_seconds, args.snr, cfg.seed)
            yield simday_to_day(sd, bin_s, smooth_s)

    window = args.window_bins or max(2, int(round(2.0 / bin_s)))  # 2-s windows, as in the paper
    hop = args.hop_bins or max(1, window // 10)
    contract = DataContract(n_channels=cfg.neural.n_channels, bin_s=bin_s, window_bins=window,
                            behavior_kind=args.behavior)
    ds = write_dataset(args.out, days(), subject=cfg.subject, source="alignnet simulator", contract=contract,
                       units_matched=True, overwrite=args.overwrite,
                       extra={"default_hop_bins": hop, "simulator": cfg.to_dict()})
    print(f"wrote {len(ds)} simulated days to {args.out}")
    _print_days(ds)
    return 0


def write_broadband(sd, path: Path, seconds: float, snr: float, seed: int) -> None:
    """The first ``seconds`` of a simulated day as 30-kHz broadband, with the true spikes for scoring."""
    n = int(seconds * SPIKE_FS)
    keep = sd.spike_samples < n
    x = simulate_broadband(sd.spike_samples[keep], sd.spike_channels[keep], sd.n_channels, n, snr=snr, seed=seed)
    atomic_savez(path, broadband=x, fs=np.float64(SPIKE_FS), behavior=sd.behavior[: int(seconds * 1000)],
                 behavior_fs=np.float64(1000.0), spike_samples=sd.spike_samples[keep],
                 spike_channels=sd.spike_channels[keep])


def _detect_format(path: Path) -> str:
    if path.suffix == ".nwb":
        return "nwb"
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return "broadband" if "broadband" in z.files else "binned"
        except Exception as e:
            raise DataError(f"{path}: not a readable .npz archive ({e})") from e
    raise DataError(f"{path}: unknown format (expected .nwb or .npz); pass --format")


def cmd_import(args: argparse.Namespace) -> int:
    files: list[Path] = []
    for p in args.paths:
        if p.is_dir():
            found = sorted(f for f in p.glob(args.pattern) if f.suffix in (".nwb", ".npz"))
            if not found:
                raise DataError(f"{p}: no .nwb or .npz files matching {args.pattern!r}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: file not found")
    days = []
    for f in tqdm(files, desc="importing", unit="day"):
        fmt = args.format if args.format != "auto" else _detect_format(f)
        bin_s = (args.bin_ms or 20.0) / 1000
        smooth_ms = args.smooth_ms
        if fmt == "binned":
            days.append(import_binned_npz(f, smooth_s=(smooth_ms or 0.0) / 1000))
            if args.bin_ms and abs(days[-1].bin_s - bin_s) > 1e-9:
                raise DataError(f"{f}: already binned at {days[-1].bin_s * 1000:g} ms; re-binning to "
                                f"{args.bin_ms:g} ms is not supported")
        elif fmt == "nwb":
            smooth_s = (smooth_ms if smooth_ms is not None else 2 * bin_s * 1000) / 1000
            days.append(import_nwb(f, bin_s, smooth_s, behavior_name=args.behavior_name))
        else:
            smooth_s = (smooth_ms if smooth_ms is not None else 2 * bin_s * 1000) / 1000
            days.append(import_broadband(f, bin_s, smooth_s, threshold=args.threshold))
    bins = {d.bin_s for d in days}
    if len(bins) > 1:
        raise DataError(f"days have different bin widths ({', '.join(f'{b * 1000:g} ms' for b in sorted(bins))}): "
                        "import them into separate datasets")
    bin_s = bins.pop()
    counts = {d.n_channels for d in days}
    if args.units_matched and len(counts) > 1:
        raise DataError(f"--units-matched, but days have different channel counts: {sorted(counts)}")
    window, hop = _window_defaults(args, days, bin_s)
    contract = DataContract(n_channels=max(counts), bin_s=bin_s, window_bins=window, behavior_kind=args.behavior,
                            extra={"channels_per_day": [d.n_channels for d in days]})
    subject = args.subject or _common_prefix([f.stem for f in files]) or "unknown"
    ds = write_dataset(args.out, days, subject=subject, source=", ".join(str(f) for f in files), contract=contract,
                       units_matched=args.units_matched, overwrite=args.overwrite,
                       extra={"default_hop_bins": hop})
    print(f"imported {len(ds)} days into {args.out}")
    _print_days(ds)
    return 0


def _common_prefix(names: list[str]) -> str:
    prefix = names[0].split("-")[0] if names else ""
    return prefix if all(n.startswith(prefix) for n in names) else ""


def _print_days(ds: Dataset) -> None:
    c = ds.contract()
    print(f"subject {ds.subject}; {len(ds)} days; bin {c.bin_s * 1000:g} ms; window {c.window_bins} bins "
          f"({c.window_s:g} s); behavior {c.behavior_kind}; units matched across days: {ds.units_matched}")


def cmd_info(args: argparse.Namespace) -> int:
    ds = Dataset(args.dataset)
    c = ds.contract()
    hop = args.hop_bins or ds.manifest.get("default_hop_bins", max(1, c.window_bins // 10))
    behavior = args.behavior or c.behavior_kind
    _print_days(ds)
    print(f"windows counted with hop {hop} bins\n")
    rows = [day_summary(ds.day(i), c.window_bins, hop, behavior)
            for i in tqdm(range(len(ds)), desc="summarising", unit="day", leave=False)]
    print(format_table(rows))
    drift = drift_summary(ds, behavior)
    if drift:
        print("\ndrift against the first day (fitted cosine tuning; a ridge decoder trained on day 0):")
        print(format_table(drift))
    else:
        print("\nno drift summary: units are not matched across days (a per-day read-in layer aligns them)")
    if args.json:
        from training.data import atomic_write_json

        atomic_write_json(args.json, {"dataset": str(args.dataset), "days": rows, "drift": drift})
    return 0


