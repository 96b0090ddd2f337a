"""``alignnet replay``: stream a recorded day over LSL and score it online (the work is done by
``alignnet.clients.replay``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignnet.cli.main import command_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay", help="stream a recorded day over LSL at real speed (and score the decoded stream online)",
        description="Stream day K of a dataset over LSL: spike counts per bin on NAME, behavior on NAME-behavior, "
        "one stamp per bin. --score collects NAME-decoded from a service bridging NAME and reports online R²; "
        "--serve starts that service here.")
    p.add_argument("data", type=Path, help="dataset folder")
    p.add_argument("--day", default="0", help="day index or name (default: %(default)s)")
    p.add_argument("--name", default="alignnet-replay", help="spike stream name (default: %(default)s)")
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time (default); 2 = twice as fast")
    p.add_argument("--start-s", type=float, default=0.0, help="start this far into the day")
    p.add_argument("--held-out", action="store_true",
                   help="replay only the day's held-out test block (the last 20 %% of its trials or time blocks, "
                   "which `alignnet train` never trains on): an honest online score")
    p.add_argument("--seconds", type=float, default=None, help="stream only this much of the day")
    p.add_argument("--behavior", choices=("pos", "vel"), default=None, help="behavior stream (default: the served "
                   "artifact's kind with --serve, else pos)")
    p.add_argument("--score", action="store_true", help="score the service's decoded stream (online R²)")
    p.add_argument("--serve", default=None, metavar="ARTIFACT",
                   help="start `alignnet serve --lsl` on this artifact ('default' for the default model)")
    p.add_argument("--hop", type=int, default=None, help="with --serve: bins per decode (default: 1)")
    p.add_argument("--offline-check", action="store_true",
                   help="with --serve: also decode the same windows offline and report the difference")
    p.add_argument("--calibrate-seconds", type=float, default=0.0, metavar="S",
                   help="with --serve: the service calibrates the session without labels on its first S seconds "
                   "and swaps the result in; the bins after the swap are scored apart, online and offline")
    p.add_argument("--json", type=Path, default=None, help="write the score here")
    p.set_defaults(func=cmd_replay)


def held_out_start(day, window_bins: int) -> float:
    """Seconds into the day where its held-out test trials (or time blocks) begin."""
    import numpy as np

    from alignnet.training.windows import split_trials

    test = split_trials(day, gap_bins=window_bins)["test"]
    if not len(test):
        raise ValueError(f"day {day.name} has too few trials to hold any out")
    return float(np.argmax(np.isin(day.trial_id, test)) * day.bin_s)


def cmd_replay(args: argparse.Namespace) -> int:
    from alignnet.clients.replay import replay_day
    from alignnet.recordings.dataset import Dataset
    from alignnet.service.settings import DEFAULT_ARTIFACT

    ds = Dataset(args.data)
    day = ds.day(ds.day_index(int(args.day) if args.day.isdigit() else args.day))
    artifact = (DEFAULT_ARTIFACT if args.serve == "default" else Path(args.serve)) if args.serve else None
    start_s = held_out_start(day, ds.contract().window_bins) if args.held_out else args.start_s
    result = replay_day(day, name=args.name, kind=args.behavior, speed=args.speed, start_s=start_s,
                        seconds=args.seconds, score=args.score, artifact=artifact, hop=args.hop,
                        offline_check=args.offline_check, calibrate_seconds=args.calibrate_seconds,
                        announce=lambda line: print(line, flush=True))
    if not (args.score or artifact):
        return 0
    result["command"] = command_line(args)
    print(json.dumps(result, indent=2))
    if args.json:
        from alignnet.model.atomic import atomic_write_json

        atomic_write_json(args.json, result)
    return 0
