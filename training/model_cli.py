"""``alignnet models`` and ``alignnet bench models``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from model import create_model, list_models
from service.bench_worker import measure
from training.data import atomic_write_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list every registered model with its parameter count",
                       description="List registered models (AlignNet, baselines, tiny test-* variants).")
    p.add_argument("--all", action="store_true", help="include the tiny test-* variants")
    p.set_defaults(func=cmd_models)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    p = bsub.add_parser("models", help="parameter count and eager forward time per window, decode and simulate",
                        description="Eager PyTorch forward time per window of every registered model (random "
                        "weights, eval mode), for the decode and the simulate path separately.")
    p.add_argument("--models", default=None, help="comma-separated names (default: all but test-* variants)")
    p.add_argument("--batch", type=int, default=1, help="windows per call (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per path (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.set_defaults(func=cmd_bench_models)
    add_export_parsers(sub, bsub)
    from service.loadtest import add_parsers

    add_parsers(bsub)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cmd_models(args: argparse.Namespace) -> int:
    names = [n for n in list_models() if args.all or not n.startswith("test-")]
    print(f"{'model':<20} {'parameters':>12}  {'channels x bins':<16} kind")
    for name in names:
        m = create_model(name)
        c = m.config
        kind = "closed form (ridge)" if not m.needs_gradients else (
            "hybrid SNN-ANN" if hasattr(m, "pretrain_outputs") else "ANN")
        print(f"{name:<20} {n_params(m):>12,}  {f'{c.n_channels} x {c.window_bins}':<16} {kind}")
    return 0


def cmd_bench_models(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else [n for n in list_models() if not n.startswith("test-")]
    rows = []
    print(f"eager PyTorch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, {args.repeats} calls; "
          "ms per call (median / p90)")
    print(f"{'model':<16} {'parameters':>11} {'decode ms':>14} {'simulate ms':>14} {'decode ms/window':>17}")
    for name in names:
        m = create_model(name).eval()
        c = m.config
        spikes = torch.rand(args.batch, c.n_channels, c.window_bins)
        behavior = torch.randn(args.batch, c.behavior_dims, c.window_bins)
        with torch.inference_mode():
            dec, sim = measure(m.decode, spikes, args.repeats), measure(m.simulate, behavior, args.repeats)
        row = {"model": name, "parameters": n_params(m), "batch": args.batch,
               "decode_ms_median": float(np.median(dec)), "decode_ms_p90": float(np.percentile(dec, 90)),
               "simulate_ms_median": float(np.median(sim)), "simulate_ms_p90": float(np.percentile(sim, 90))}
        rows.append(row)
        print(f"{name:<16} {row['parameters']:>11,} {row['decode_ms_median']:>7.2f}/{row['decode_ms_p90']:<6.2f} "
              f"{row['simulate_ms_median']:>7.2f}/{row['simulate_ms_p90']:<6.2f} "
              f"{row['decode_ms_median'] / args.batch:>17.3f}")
    if args.json:
        atomic_write_json(args.json, {"threads": args.threads, "torch": torch.__version__, "rows": rows})
        print(f"wrote {args.json}")
    return 0




# ---- export and latency ----------------------------------------------------------------------------------------
def add_export_parsers(sub: argparse._SubParsersAction, bsub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write decode/simulate ONNX and TorchScript graphs into an artifact",
                       description="Export RUN/artifact (or an artifact folder) with a dynamic batch dimension; "
                       "checks parity with eager PyTorch (max |diff| <= 1e-4, identical spikes inside the SNN) and "
                       "writes nothing if it fails.")
    p.add_argument("run", type=Path, help="artifact folder, or a run folder holding artifact/")
    p.add_argument("--formats", default="onnx,torchscript", help="comma-separated: onnx, torchscript")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset whose last-day windows (last 20 %% of trials) serve as parity inputs "
                        "(default: seeded random windows)")
    p.set_defaults(func=cmd_export)

    p = bsub.add_parser("latency", help="batch-1 latency p50/p99 and throughput of each runtime engine",
                        description="Each engine runs in its own process. Batch-1 decode and simulate latency "
                        "(p50/p99) and throughput at batch 1, 8 and 64. With --data, also accuracy against latency "
                        "for fewer SNN steps at inference.")
    p.add_argument("artifact", type=Path, help="exported artifact folder (or run folder)")
    p.add_argument("--engines", default="onnx,torchscript,eager", help="comma-separated (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="threads per engine (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=300, help="timed batch-1 calls (default: %(default)s)")
    p.add_argument("--data", type=Path, default=None, help="dataset for the SNN-steps trade-off (optional)")
    p.add_argument("--steps", default="1,2,3,4", help="SNN steps to try with --data (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.set_defaults(func=cmd_bench_latency)


def _artifact_dir(path: Path) -> Path:
    return path / "artifact" if (path / "artifact" / "config.json").is_file() else path


def _last_day_windows(data: Path, contract, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Windows of the last 20 % of trials of the dataset's last day, as raw counts and behavior. They are held out
    only if training held them out (`alignnet train` uses every trial but its validation slice)."""
    from training.data import Dataset
    from training.windows import split_trials, windows_in_trials

    ds = Dataset(data)
    day = ds.day(len(ds) - 1)
    w = windows_in_trials(day, split_trials(day)["test"], contract.window_bins, contract.window_bins,
                          contract.behavior_kind)
    if len(w) == 0:
        raise ValueError(f"{data}: no held-out windows of {contract.window_bins} bins on the last day")
    return w.counts[:n], w.behavior[:n]


def cmd_export(args: argparse.Namespace) -> int:
    from model.artifacts import read_config
    from model.contract import DataContract
    from training.export import export_artifact

    folder = _artifact_dir(args.run)
    contract = DataContract.from_dict(read_config(folder)["contract"])
    spikes = behavior = None
    if args.data:
        counts, beh = _last_day_windows(args.data, contract)
        spikes, behavior = contract.preprocess_spikes(counts), contract.preprocess_behavior(beh)
    report = export_artifact(folder, tuple(f.strip() for f in args.formats.split(",")), spikes=spikes,
                             behavior=behavior)
    for name, r in report.items():
        spikes_txt = ""
        if "spike_mismatches" in r:
            spikes_txt = (f", {r['spike_mismatches']} of {r['spikes_compared']:,} SNN spikes flipped at threshold by "
                          f"float rounding ({r['windows_with_flips']} windows; outputs compared on the others)"
                          if r["spike_mismatches"] else f", spikes identical ({r['spikes_compared']:,} compared)")
        print(f"{name}: max |diff| {r['max_abs_diff']:.2e} on {r['windows']} windows{spikes_txt}")
    print(f"exported into {folder}")
    return 0


def _worker(folder: Path, engine: str, threads: int, repeats: int) -> dict:
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "service.bench_worker", str(folder), engine, "--threads",
                           str(threads), "--repeats", str(repeats)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} benchmark failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cmd_bench_latency(args: argparse.Namespace) -> int:
    import platform

    from service.engines import check_artifact

    folder = _artifact_dir(args.artifact)
    engines = [e.strip() for e in args.engines.split(",")]
    for engine in engines:  # clear errors here, not a traceback from a worker process
        check_artifact(folder, engine)
    rows = []
    print(f"{folder}: {args.threads} thread(s), {args.repeats} batch-1 calls per path, each engine in its own "
          f"process ({platform.processor() or platform.machine()})")
    print(f"{'engine':<12} {'decode p50/p99 ms':>19} {'simulate p50/p99 ms':>21} "
          f"{'decode windows/s at batch 1 / 8 / 64':>38}")
    for engine in engines:
        r = _worker(folder, engine, args.threads, args.repeats)
        rows.append(r)
        print(f"{engine:<12} {r['decode_p50_ms']:>9.2f}/{r['decode_p99_ms']:<9.2f} "
              f"{r['simulate_p50_ms']:>10.2f}/{r['simulate_p99_ms']:<10.2f} "
              f"{r['decode_windows_per_s_b1']:>12.0f} / {r['decode_windows_per_s_b8']:.0f} / "
              f"{r['decode_windows_per_s_b64']:.0f}")
    by = {r["engine"]: r for r in rows}
    out = {"artifact": str(folder), "threads": args.threads, "engines": rows}
    if "onnx" in by and "eager" in by:
        out["onnx_over_eager_decode_p50"] = by["onnx"]["decode_p50_ms"] / by["eager"]["decode_p50_ms"]
        print(f"ONNX Runtime / eager PyTorch, batch-1 decode p50: {out['onnx_over_eager_decode_p50']:.2f}")
    if args.data:
        out["snn_steps"] = steps_tradeoff(folder, args.data, [int(s) for s in args.steps.split(",")], args.threads,
                                          args.repeats)
        print(f"\n{'SNN steps':>9} {'decode R²':>10} {'ONNX decode p50/p99 ms':>24}")
        for s in out["snn_steps"]:
            print(f"{s['time_steps']:>9} {s['r2']:>10.3f} {s['p50_ms']:>11.2f}/{s['p99_ms']:<9.2f}")
    if args.json:
        atomic_write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0


def steps_tradeoff(folder: Path, data: Path, steps: list[int], threads: int, repeats: int) -> list[dict]:
    """Decode R² on the last day's last 20 % of trials and ONNX latency with fewer SNN steps at inference (same
    weights)."""
    import shutil
    import tempfile

    from model.artifacts import load_artifact, save_artifact
    from training.export import export_artifact
    from training.metrics import r2

    base, contract, config = load_artifact(folder)
    if "time_steps" not in config["model_config"]:
        raise ValueError(f"{config['model']} has no SNN steps to vary")
    counts, beh = _last_day_windows(data, contract, n=256)
    out = []
    for ts in steps:
        with tempfile.TemporaryDirectory() as tmp:
            model = create_model(config["model"], **{**config["model_config"], "time_steps": ts})
            model.load_state_dict(base.state_dict())
            save_artifact(Path(tmp) / "a", model.eval(), contract)
            export_artifact(Path(tmp) / "a", ("onnx",), spikes=contract.preprocess_spikes(counts[:32]),
                            behavior=contract.preprocess_behavior(beh[:32]))
            from service.engines import OnnxEngine

            pred = OnnxEngine(Path(tmp) / "a", threads).decode(counts)
            lat = _worker(Path(tmp) / "a", "onnx", threads, repeats)
            out.append({"time_steps": ts, "r2": r2(beh, pred, 1), "p50_ms": lat["decode_p50_ms"],
                        "p99_ms": lat["decode_p99_ms"]})
            shutil.rmtree(Path(tmp) / "a", ignore_errors=True)
    return out
