"""``alignnet data simulate | import | info`` (the work is done by ``alignnet.recordings``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from tqdm.auto import tqdm

from alignnet.recordings.dataset import DEFAULT_DATASET, Dataset


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
                   help="22 days of 1,459 trials, the paper's 32,083 rounded up to whole days (overrides --days and "
                        "--trials)")
    p.add_argument("--setting", choices=["cortex", "simple"], default="cortex",
                   help="cortex: rates driven by a latent dynamical system (rotational, driven by the intended "
                        "movement), trial-to-trial variability, drift within a day, channels on a 2-D array; simple: "
                        "rates an instantaneous function of kinematics, as before (default: %(default)s)")
    p.add_argument("--config", type=Path,
                   help="YAML file of simulator settings (task, neural, drift, dynamics sections) over --setting")
    p.add_argument("--drift-scale", type=float, default=1.0,
                   help="multiply every drift magnitude (0 = no drift between days; default: %(default)s)")
    _add_binning(p)
    p.add_argument("--nwb", action="store_true", help="also write each day as NWB (nwb/dayNNN.nwb)")
    p.add_argument("--broadband-seconds", type=float, default=0.0,
                   help="also write this many seconds of 30-kHz broadband of day 0 with spike waveforms in noise "
                        "(broadband/day000.npz), input for `alignnet data import --format broadband`")
    p.add_argument("--snr", type=float, default=6.0, help="spike trough / noise std of the broadband (default: 6)")
    p.add_argument("--workers", type=int, default=0,
                   help="days simulated at once, each in its own process (0: as many as cores, days and free "
                        "memory allow; 1: in this process); the dataset is the same for any number (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.set_defaults(func=cmd_simulate)

    p = dsub.add_parser(
        "import", help="import recordings (NWB, XDF, binned .npz, broadband .npz) into a canonical dataset",
        description="Import one recording per day. Formats: 'nwb' (Units table or threshold-crossing TimeSeries + "
        "a behavior SpatialSeries/TimeSeries), 'binned' (the layout of ../shared/data/real: spike_counts, pos, "
        "vel, trial_id, timestep, target, bin_size_s), 'broadband' (.npz with broadband, fs, behavior, "
        "behavior_fs), 'xdf' (an LSL session recorded by LabRecorder: a spike stream of counts or spike events and a "
        "behavior stream, aligned on their synchronised stamps), 'falcon-m2' (and -m1, -h1: FALCON benchmark NWB "
        "files, read by FALCON's own loader; the target becomes vel). A folder imports every file in it that matches "
        "--pattern.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="files (one per day) or folders")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--format", choices=("auto", "nwb", "binned", "broadband", "xdf", "falcon-m1", "falcon-m2",
                                        "falcon-h1"), default="auto",
                   help="input format; auto decides from the extension and keys (default: auto)")
    p.add_argument("--pattern", default="*", help="glob for files inside folders (default: all .nwb/.npz)")
    p.add_argument("--subject", default=None, help="subject name for the manifest (default: from the files)")
    p.add_argument("--behavior-name", default=None, help="NWB: name of the behavior TimeSeries to use")
    p.add_argument("--spike-stream", default=None, metavar="NAME",
                   help="XDF: the spike stream's name or type (default: the one stream of type Spikes)")
    p.add_argument("--behavior-stream", default=None, metavar="NAME",
                   help="XDF: the behavior stream's name or type (default: the one stream of type Behavior)")
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


def _positive_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of ms, got {text}")
    return value


def _add_binning(p: argparse.ArgumentParser, bin_default: float | None = 20.0) -> None:
    p.add_argument("--bin-ms", type=_positive_ms, default=bin_default,
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


def cmd_simulate(args: argparse.Namespace) -> int:
    from alignnet.recordings.build import sim_config, simulate_dataset

    cfg = sim_config(args.days, args.trials, args.seed, args.paper_scale, args.config, args.drift_scale,
                     setting=args.setting)
    ds = simulate_dataset(args.out, cfg, bin_ms=args.bin_ms, smooth_ms=args.smooth_ms, window_bins=args.window_bins,
                          hop_bins=args.hop_bins, behavior=args.behavior, nwb=args.nwb,
                          broadband_seconds=args.broadband_seconds, snr=args.snr, overwrite=args.overwrite,
                          workers=args.workers)
    print(f"wrote {len(ds)} simulated days to {args.out}")
    _print_days(ds)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from alignnet.recordings.build import import_dataset

    ds = import_dataset(args.paths, args.out, fmt=args.format, pattern=args.pattern, subject=args.subject,
                        units_matched=args.units_matched, behavior=args.behavior, bin_ms=args.bin_ms,
                        smooth_ms=args.smooth_ms, window_bins=args.window_bins, hop_bins=args.hop_bins,
                        behavior_name=args.behavior_name, threshold=args.threshold, overwrite=args.overwrite,
                        spike_stream=args.spike_stream, behavior_stream=args.behavior_stream)
    print(f"imported {len(ds)} days into {args.out}")
    _print_days(ds)
    return 0


def _print_days(ds: Dataset) -> None:
    c = ds.contract()
    print(f"subject {ds.subject}; {len(ds)} days; bin {c.bin_s * 1000:g} ms; window {c.window_bins} bins "
          f"({c.window_s:g} s); behavior {c.behavior_kind}; units matched across days: {ds.units_matched}")


def cmd_info(args: argparse.Namespace) -> int:
    from alignnet.model.atomic import atomic_write_json
    from alignnet.recordings.summary import day_summary, drift_summary, format_table, training_plan, why_missing

    ds = Dataset(args.dataset)
    c = ds.contract()
    hop = args.hop_bins or ds.manifest.get("default_hop_bins", max(1, c.window_bins // 10))
    behavior = args.behavior or c.behavior_kind
    _print_days(ds)
    print(f"windows counted with hop {hop} bins\n")
    rows = [day_summary(ds.day(i), c.window_bins, hop, behavior)
            for i in tqdm(range(len(ds)), desc="summarising", unit="day", leave=False)]
    print(format_table(rows))
    reasons = [r for r in (why_missing(ds.day(i), behavior) for i in range(len(ds))) if r]
    if reasons:
        print("\n'-' under ridge_r2: " + "; ".join(reasons))
    print("\nwhat `alignnet train` (default config) and `alignnet evaluate` will use:")
    print("\n".join(f"  {line}" for line in training_plan(ds)))
    drift = drift_summary(ds, behavior)
    if drift:
        print("\ndrift against the first day (fitted cosine tuning; a ridge decoder trained on day 0):")
        print(format_table(drift))
    else:
        print("\nno drift summary: units are not matched across days (a per-day read-in layer aligns them)")
    if args.json:
        atomic_write_json(args.json, {"dataset": str(args.dataset), "days": rows, "drift": drift})
    return 0
