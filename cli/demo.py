"""``alignnet demo``: the closed-loop cursor demo (the work is done by ``alignnet.clients.demo``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignnet.cli._common import command_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="closed-loop cursor demo: a virtual subject drives a cursor through the live service",
        description="Start `alignnet serve --lsl` with a decoder, stream a virtual subject's spikes (simulated day "
        "--day, which the default models never trained on) and close the loop through the decoded cursor. "
        "Open the printed URL to watch, or use --headless to run N trials and report numbers.")
    p.add_argument("--decoder", default="alignnet", help="alignnet | wiener (the default models), or an artifact "
                   "folder (default: %(default)s)")
    p.add_argument("--day", type=int, default=6, help="simulated day of the subject (default: %(default)s; the "
                   "default models trained on days 0-5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject's spikes and the target order")
    p.add_argument("--headless", action="store_true", help="no web page: run --trials trials and report")
    p.add_argument("--trials", type=int, default=24, help="trials of a headless run (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="headless: write the report here")
    p.add_argument("--calibrate", action="store_true",
                   help="headless: --trials trials, then a live zero-label calibration on the last "
                        "--calibrate-seconds of spikes (the loop keeps running), then --trials more; reports both")
    p.add_argument("--calibrate-seconds", type=float, default=60.0,
                   help="spikes a live calibration fits on (default: %(default)s; the page's button too)")
    p.add_argument("--host", default="127.0.0.1", help="address of the page (default: %(default)s)")
    p.add_argument("--port", type=int, default=8001, help="port of the page (default: %(default)s)")
    p.add_argument("--service-port", type=int, default=8000, help="port of the service (default: %(default)s)")
    p.add_argument("--engine", choices=("onnx", "torchscript", "eager"), default="onnx")
    p.set_defaults(func=cmd_demo)



def cmd_demo(args: argparse.Namespace) -> int:
    from alignnet.clients.demo import resolve_decoder, run_headless, run_page

    artifact = resolve_decoder(args.decoder)
    if not args.headless:
        run_page(artifact, args.day, args.seed, args.engine, args.host, args.port, args.service_port,
                 announce=lambda line: print(line, flush=True))
        return 0
    if args.calibrate:
        from alignnet.clients.recalibrate import run_headless_calibrated

        report = run_headless_calibrated(artifact, args.trials, args.day, args.seed, args.engine,
                                         args.calibrate_seconds)
    else:
        report = run_headless(artifact, args.trials, args.day, args.seed, args.engine)
    report = {"decoder": args.decoder, **report, "command": command_line(args)}
    print(json.dumps(report, indent=2))
    if args.json:
        from alignnet.model.atomic import atomic_write_json

        atomic_write_json(args.json, report)
    return 0
