"""``alignnet bench models | latency | load | streams | lsl | train`` (the work is done by ``alignnet.bench.engines``,
``alignnet.bench.load``, ``alignnet.bench.streams`` and ``alignnet.training.throughput``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignnet.cli._common import command_line
from alignnet.model.atomic import atomic_write_json
from alignnet.service.http.settings import DEFAULT_ARTIFACT


def add_parser(sub: argparse._SubParsersAction) -> None:
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

    p = bsub.add_parser("load", help="N concurrent clients (or R requests/s, open loop) against POST /decode for T "
                        "seconds (loopback)",
                        description="Start `alignnet serve` (or use --url), run N concurrent HTTP clients posting "
                        "batch-1 windows to /decode for T seconds, each sending when its last was answered (the "
                        "capacity), and report errors, throughput and p50/p99. With --rate R, offer R requests a "
                        "second instead, each at its own time whether or not earlier ones were answered (open "
                        "loop, as independent users load it); latency counts from when each request was due.")
    p.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="artifact to serve (default: default model)")
    p.add_argument("--url", default=None, help="use a running service instead of starting one")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")
    p.add_argument("--rate", type=float, default=None, help="offer this many requests a second, open loop, "
                   "instead of --clients (e.g. half the capacity a closed-loop run measured)")
    p.add_argument("--seconds", type=float, default=20.0, help="duration (default: %(default)s)")
    p.add_argument("--format", choices=("json", "npy"), default="json", help="request body (default: json)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.set_defaults(func=cmd_load)

    p = bsub.add_parser("streams", help="N simulated LSL sources at the bin rate through one service: hops, drops, "
                        "latency per stream (--find-max: the most streams held under one bin)",
                        description="Start one `alignnet serve --lsl` with N --lsl-source, push N simulated sources "
                        "from one generator process, time every decoded sample against its input stamp.")
    p.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="artifact to serve (default: default model)")
    p.add_argument("--streams", type=int, default=8, help="sources (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0, help="timed duration per run (default: %(default)s)")
    p.add_argument("--find-max", action="store_true", help="search the largest N with every stream's p99 under one "
                   "bin and nothing dropped (doubling from --streams, then bisecting)")
    p.add_argument("--batch-wait-ms", type=float, default=None, help="the service's --lsl-batch-wait-ms")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.set_defaults(func=cmd_streams)

    p = bsub.add_parser("lsl", help="LSL end-to-end latency: input stamp -> decoded sample received",
                        description="Start `alignnet serve --lsl`, stream 64-channel counts at the bin rate from an "
                        "LSL outlet for T seconds and time every decoded sample against its input stamp.")
    p.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="artifact to serve (default: default model)")
    p.add_argument("--seconds", type=float, default=30.0, help="duration (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.set_defaults(func=cmd_lsl)

    p = bsub.add_parser("train", help="training throughput (windows/s) of a model's step: eager or compiled, fp32 "
                        "or bf16, on any device", description="The trainer's own step (loss, backward, clipping, "
                        "AdamW) on seeded synthetic windows of the model's shape, each variant built afresh, its "
                        "first steps (compilation) timed apart; with a compiled variant, also torch.compile's "
                        "graph breaks in the step's forward.")
    p.add_argument("--model", default="alignnet-paper", help="registered model (default: %(default)s)")
    p.add_argument("--stage", default="pretrain", choices=("pretrain", "decode", "simulate", "both"),
                   help="training stage (default: %(default)s)")
    p.add_argument("--batch", type=int, default=256, help="windows per step (default: %(default)s, the paper's)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--compile", default="both",
                   help="comma-separated: off (eager), on (torch.compile's default mode), reduce-overhead (CUDA "
                        "graphs), max-autotune, max-autotune-no-cudagraphs; both = off,on (default: %(default)s)")
    p.add_argument("--channels-last", choices=("off", "on", "both"), default="off",
                   help="the 2-D convolutions' memory layout: default, channels-last, or both (default: %(default)s)")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated fp32/bf16 (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.set_defaults(func=cmd_train)


def _write(path: Path | None, result: dict) -> None:
    if path:
        atomic_write_json(path, result)
        print(f"wrote {path}")


def _record(args: argparse.Namespace, result: dict, show: bool = False) -> None:
    """Stamp the figures with the command that made them, print them whole with ``show``, and write them to
    ``--json``."""
    result["command"] = command_line(args)
    if show:
        print(json.dumps(result, indent=2))
    _write(args.json, result)


def cmd_bench_models(args: argparse.Namespace) -> int:
    import torch

    from alignnet.bench.engines import bench_models

    print(f"eager PyTorch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, {args.repeats} calls; "
          "ms per call (median / p90)")
    print(f"{'model':<16} {'parameters':>11} {'decode ms':>14} {'simulate ms':>14} {'decode ms/window':>17}")
    rows = bench_models(args.models.split(",") if args.models else None, args.batch, args.repeats, args.threads)
    for row in rows:
        print(f"{row['model']:<16} {row['parameters']:>11,} {row['decode_ms_median']:>7.2f}/"
              f"{row['decode_ms_p90']:<6.2f} {row['simulate_ms_median']:>7.2f}/{row['simulate_ms_p90']:<6.2f} "
              f"{row['decode_ms_median'] / args.batch:>17.3f}")
    _write(args.json, {"threads": args.threads, "torch": torch.__version__, "rows": rows})
    return 0


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from alignnet.bench.engines import bench_latency
    from alignnet.cli.models import artifact_dir

    folder = artifact_dir(args.artifact)
    import platform

    print(f"{folder}: {args.threads} thread(s), {args.repeats} batch-1 calls per path, each engine in its own "
          f"process ({platform.processor() or platform.machine()})")
    print(f"{'engine':<12} {'decode p50/p99 ms':>19} {'simulate p50/p99 ms':>21} "
          f"{'decode windows/s at batch 1 / 8 / 64':>38}")

    def row(r: dict) -> None:
        print(f"{r['engine']:<12} {r['decode_p50_ms']:>9.2f}/{r['decode_p99_ms']:<9.2f} "
              f"{r['simulate_p50_ms']:>10.2f}/{r['simulate_p99_ms']:<10.2f} "
              f"{r['decode_windows_per_s_b1']:>12.0f} / {r['decode_windows_per_s_b8']:.0f} / "
              f"{r['decode_windows_per_s_b64']:.0f}", flush=True)

    out = bench_latency(folder, [e.strip() for e in args.engines.split(",")], args.threads, args.repeats,
                        args.data, [int(s) for s in args.steps.split(",")], progress=row)
    if "onnx_over_eager_decode_p50" in out:
        print(f"ONNX Runtime / eager PyTorch, batch-1 decode p50: {out['onnx_over_eager_decode_p50']:.2f}")
    if "snn_steps" in out:
        print(f"\n{'SNN steps':>9} {'decode R²':>10} {'ONNX decode p50/p99 ms':>24}")
        for s in out["snn_steps"]:
            print(f"{s['time_steps']:>9} {s['r2']:>10.3f} {s['p50_ms']:>11.2f}/{s['p99_ms']:<9.2f}")
    _write(args.json, out)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from alignnet.bench.load import http_load

    result = http_load(args.artifact, args.clients, args.seconds, args.format, url=args.url, rate=args.rate)
    _record(args, result, show=True)
    return 0 if result["error_count"] == 0 else 1


def cmd_lsl(args: argparse.Namespace) -> int:
    from alignnet.bench.load import lsl_latency

    result = lsl_latency(args.artifact, args.seconds)
    _record(args, result, show=True)
    return 0


def cmd_streams(args: argparse.Namespace) -> int:
    from alignnet.bench.streams import bench_streams, find_max

    def show(r: dict) -> None:
        print(f"{r['streams']:>4} streams: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms (worst stream "
              f"{r['worst_stream_p99_ms']} ms), dropped {r['dropped']}, received {r['received_fraction']:.1%}, "
              f"service peak RSS {r['service_peak_rss_mb']} MB", flush=True)

    if args.find_max:
        result = find_max(args.artifact, args.seconds, start=args.streams, progress=show,
                          batch_wait_ms=args.batch_wait_ms)
        print(f"most streams held (p99 < one bin, nothing dropped): {result['max_streams']}")
    else:
        result = bench_streams(args.artifact, args.streams, args.seconds, batch_wait_ms=args.batch_wait_ms)
        show(result)
    _record(args, result)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from alignnet.recordings.dataset import DataError
    from alignnet.training.throughput import bench_train
    from alignnet.training.trainer import COMPILE_MODES

    def show(r: dict) -> None:
        print(f"{r['model']} {r['stage']} on {r['device']}, batch {r['batch']}, "
              f"{r['compile_mode'] or 'eager'} {r['precision']}{' channels-last' * r['channels_last']}: "
              f"{r['windows_per_s']:,.0f} windows/s "
              f"(step {r['step_ms_median']:.1f} ms, warm-up {r['warmup_s']:.1f} s)", flush=True)

    modes = []
    for name in args.compile.replace("both", "off,on").split(","):
        mode = {"off": None, "on": "default"}.get(name.strip(), name.strip())
        if mode is not None and mode not in COMPILE_MODES:
            raise DataError(f"--compile {name!r}: expected off, on, both or one of {', '.join(COMPILE_MODES)}")
        modes.append(mode)
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    layouts = {"off": (False,), "on": (True,), "both": (False, True)}[args.channels_last]
    result = bench_train(args.model, args.batch, args.steps, args.device, tuple(modes), precisions, args.stage, show,
                         layouts)
    if "graph_breaks" in result:
        g = result["graph_breaks"]
        print(f"torch.compile: {g['graphs']} graph(s), {g['graph_breaks']} break(s) in the step's forward"
              + "".join(f"\n  {r}" for r in g["reasons"]))
    _record(args, result)
    return 0
