"""``alignnet replay``: stream a recorded day over LSL and score it online (the work is done by
``alignnet.clients.replay``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignnet.cli._common import command_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay", help="stream a recorded day over LSL at real speed (and score the decoded stream online)",
        description="Stream day K of a dataset over LSL: spike counts per bin on NAME, behavior on NAME-behavior, "
        "one stamp per bin; or an XDF session (LabRecorder, `alignnet record`): its spike and behavior streams again "
        "with their recorded timing. --score collects NAME-decoded from a service bridging NAME and reports online "
        "R²; --serve starts that service here.")
    p.add_argument("data", type=Path, help="dataset folder, or an .xdf file")
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
    p.add_argument("--spike-stream", default=None, metavar="NAME",
                   help="XDF: the spike stream's name or type (default: the one stream of type Spikes)")
    p.add_argument("--behavior-stream", default=None, metavar="NAME",
                   help="XDF: the behavior stream's name or type (default: the one stream of type Behavior)")
    p.add_argument("--nwb", type=Path, default=None, metavar="FILE",
                   help="with --score: write the decoded stream and the behavior it was scored against to NWB")
    p.add_argument("--json", type=Path, default=None, help="write the score here")
    p.set_defaults(func=cmd_replay)

    r = sub.add_parser(
        "record", help="record LSL streams into an XDF file (as LabRecorder does)",
        description="Record the named LSL streams, with their stamps, metadata and clock offsets, into an XDF file "
        "until Ctrl-C or --seconds; pyxdf (and `alignnet data import` / `alignnet replay`) read it.")
    r.add_argument("out", type=Path, help="the .xdf file to write")
    r.add_argument("--stream", action="append", required=True, metavar="NAME", help="a stream to record (repeat)")
    r.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    r.add_argument("--timeout", type=float, default=10.0, help="wait this long for each stream (default: 10 s)")
    r.set_defaults(func=cmd_record)


def held_out_start(day, window_bins: int) -> float:
    """Seconds into the day where its held-out test trials (or time blocks) begin."""
    import numpy as np

    from alignnet.training.windows import split_trials

    test = split_trials(day, gap_bins=window_bins)["test"]
    if not len(test):
        raise ValueError(f"day {day.name} has too few trials to hold any out")
    return float(np.argmax(np.isin(day.trial_id, test)) * day.bin_s)


def cmd_replay(args: argparse.Namespace) -> int:
    from alignnet.service.http.settings import DEFAULT_ARTIFACT

    artifact = (DEFAULT_ARTIFACT if args.serve == "default" else Path(args.serve)) if args.serve else None
    if args.nwb and not (args.score or artifact):
        raise ValueError("--nwb writes the scored streams: add --score (or --serve)")
    announce = lambda line: print(line, flush=True)  # noqa: E731
    if args.data.suffix.lower() == ".xdf":
        from alignnet.clients.xdf_replay import replay_xdf

        for flag, given in (("--held-out", args.held_out), ("--offline-check", args.offline_check),
                            ("--calibrate-seconds", args.calibrate_seconds > 0), ("--seconds", args.seconds)):
            if given:
                raise ValueError(f"{flag} applies to dataset days, not to XDF sessions")
        result = replay_xdf(args.data, spikes=args.spike_stream, behavior=args.behavior_stream, name=args.name,
                            speed=args.speed, score=args.score, artifact=artifact, hop=args.hop, nwb=args.nwb,
                            announce=announce)
    else:
        from alignnet.clients.replay import replay_day
        from alignnet.recordings.dataset import Dataset

        ds = Dataset(args.data)
        day = ds.day(ds.day_index(int(args.day) if args.day.isdigit() else args.day))
        start_s = held_out_start(day, ds.contract().window_bins) if args.held_out else args.start_s
        result = replay_day(day, name=args.name, kind=args.behavior, speed=args.speed, start_s=start_s,
                            seconds=args.seconds, score=args.score, artifact=artifact, hop=args.hop,
                            offline_check=args.offline_check, calibrate_seconds=args.calibrate_seconds,
                            nwb=args.nwb, announce=announce)
    if not (args.score or artifact):
        return 0
    result["command"] = command_line(args)
    print(json.dumps(result, indent=2))
    if args.json:
        from alignnet.model.atomic import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    import time

    from alignnet.clients.recorder import Recorder

    if args.out.suffix.lower() != ".xdf":
        raise ValueError(f"{args.out}: the recording is an XDF file; name it *.xdf")
    rec = Recorder(args.out, args.stream, timeout=args.timeout)
    print(f"recording {', '.join(args.stream)} into {args.out}" + (
        f" for {args.seconds:g} s" if args.seconds else " (Ctrl-C stops)"), flush=True)
    try:
        end = time.monotonic() + (args.seconds if args.seconds else float("inf"))
        while time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        counts = rec.stop()
    print(json.dumps({"file": str(args.out), "samples": counts}, indent=2))
    return 0
