"""``alignnet models`` and ``alignnet bench models``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from model import create_model, list_models
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


def time_call(fn, x: torch.Tensor, repeats: int) -> list[float]:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            out.append((time.perf_counter() - t) * 1000)
    return out


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
        dec, sim = time_call(m.decode, spikes, args.repeats), time_call(m.simulate, behavior, args.repeats)
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


