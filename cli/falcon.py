"""``alignnet falcon``: an artifact through the FALCON benchmark's own evaluator (``alignnet.clients.falcon``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignnet.cli._common import command_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "falcon", help="score an artifact with the FALCON benchmark's evaluator (per-bin decoding across days)",
        description="Run FALCON's local evaluation (falcon_challenge FalconEvaluator, phase minival) with the artifact "
        "behind FALCON's decoder interface: one prediction per 20-ms bin, the newest bin of a ring buffer per session. "
        "DATA holds the downloaded FALCON files as FALCON lays them out: DATA/<split>/minival/*.nwb (and, for "
        "--calibrate, DATA/<split>/held_out_calib/*.nwb).")
    p.add_argument("artifact", type=Path, help="exported artifact folder (channels, bins and outputs of the split)")
    p.add_argument("--split", choices=("m1", "m2", "h1"), default="m2", help="FALCON task (default: %(default)s)")
    p.add_argument("--data", type=Path, required=True, help="folder holding <split>/minival/ (FALCON's layout)")
    p.add_argument("--batch-size", type=int, default=None, help="sessions decoded together (default: FALCON's "
                   "recommended size for the split)")
    p.add_argument("--calibrate", action="store_true", help="first calibrate each held-out session on its FALCON "
                   "calibration file through the new-day path (AlignNet artifacts)")
    p.add_argument("--calibration-dir", type=Path, default=None, help="where calibrated artifacts go")
    p.add_argument("--engine", choices=("onnx", "torchscript"), default="onnx", help="runtime (default: onnx)")
    p.add_argument("--json", type=Path, default=None, help="also write the scores here")
    p.set_defaults(func=cmd_falcon)


def cmd_falcon(args: argparse.Namespace) -> int:
    try:
        from alignnet.clients.falcon import evaluate
    except ImportError as e:
        raise ValueError(str(e)) from None
    if not (args.data / args.split).is_dir():
        raise FileNotFoundError(f"{args.data / args.split}: no FALCON {args.split} data there (expected "
                                f"{args.data}/{args.split}/minival/*.nwb)")
    result = evaluate(args.artifact, args.split, args.data, batch_size=args.batch_size, calibrate=args.calibrate,
                      calibration_dir=args.calibration_dir, engine=args.engine)
    result["command"] = command_line(args)
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        from alignnet.model.atomic import atomic_write_json

        atomic_write_json(args.json, result)
    return 0
