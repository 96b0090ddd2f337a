"""``alignnet serve``: the HTTP service (and, with ``--lsl``, the LSL bridge) on the default or a given model."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from alignnet.service.http.settings import DEFAULT_ARTIFACT

    p = sub.add_parser(
        "serve", help="serve a model over HTTP (POST /decode, /simulate) and optionally bridge LSL streams",
        description="Start the decoding service. With no arguments it serves the default model kept in the "
        f"repository ({DEFAULT_ARTIFACT.name}: AlignNet, configs/quick.yaml on the embedded simulated dataset; "
        "rebuilt by scripts/build_default_models.sh). Every option can also be set with an ALIGNNET_* "
        "environment variable (e.g. ALIGNNET_ARTIFACT). OpenAPI docs at http://HOST:PORT/docs.",
    )
    p.add_argument("--artifact", type=Path, default=None, help="exported artifact folder (default: the default model)")
    p.add_argument("--engine", choices=("onnx", "torchscript", "eager"), default=None, help="runtime (default: onnx)")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: 1)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=None, help="engine worker threads for HTTP requests (default: 1)")
    p.add_argument("--http-batch-wait-ms", type=float, default=None, metavar="MS",
                   help="decode the windows of concurrent /decode requests that arrive within MS in one engine call "
                   "(with --workers 2 or more; default: off, slower per window on 2 CPU cores)")
    g = p.add_argument_group("LSL bridge")
    g.add_argument("--lsl", action="store_true", help="decode a spike stream from LSL, push the trajectory")
    g.add_argument("--lsl-source", action="append", default=None, metavar="NAME",
                   help="spike stream name (default: any of the type); repeat for several sources, each decoded to "
                   "its own NAME-decoded stream, their hops batched into shared engine calls")
    g.add_argument("--lsl-batch-wait-ms", type=float, default=None, metavar="MS",
                   help="with several sources: how long a bin waits for the other sources' bins to be decoded "
                   "with it (incremental: until every source has one, at most this; default: 1)")
    g.add_argument("--lsl-batch-workers", type=int, default=None, metavar="N",
                   help="with several sources: decoding threads, one engine thread each (default: 2)")
    g.add_argument("--lsl-type", default=None, metavar="TYPE", help="spike stream type (default: Spikes)")
    g.add_argument("--lsl-output", default=None, metavar="NAME", help="decoded stream name (default: SOURCE-decoded)")
    g.add_argument("--lsl-reverse", action="store_true",
                   help="also simulate: behavior stream in (type Behavior), simulated spikes out")
    g.add_argument("--lsl-behavior-source", default=None, metavar="NAME", help="behavior stream name (reverse)")
    g.add_argument("--lsl-sample", action="store_true", help="reverse: push sampled counts instead of rates")
    g.add_argument("--hop", type=int, default=None, help="bins between two decodes (default: 1)")
    g.add_argument("--calibrate-seconds", type=float, default=None, metavar="S",
                   help="calibrate the session's read-in without labels on its first S seconds (decoding with the "
                        "served model meanwhile), then serve the calibrated model (saved next to the artifact)")
    g.add_argument("--calibration-dir", type=Path, default=None,
                   help="where calibrated artifacts go (default: ARTIFACT-calibrated next to the artifact)")
    g.add_argument("--lsl-window-decode", action="store_true",
                   help="decode the whole ring buffer every hop even where the artifact decodes incrementally "
                        "(decode_stream.npz: the same numbers from cached columns; for comparisons)")
    g.add_argument("--max-lag", type=int, default=None, metavar="BINS",
                   help="backlog beyond which only the newest hop is decoded (default: 10)")
    p.set_defaults(func=cmd_serve)


def settings_from_args(args: argparse.Namespace):
    from alignnet.service.http.settings import Settings

    if args.lsl_source and len(args.lsl_source) > 1:
        if args.lsl_output:
            raise ValueError("--lsl-output names one output stream; with several --lsl-source each source gets its "
                             "own SOURCE-decoded")
        if args.calibrate_seconds:
            raise ValueError("--calibrate-seconds calibrates one session: give one --lsl-source")
    overrides = {k: v for k, v in {
        "artifact": args.artifact, "engine": args.engine, "threads": args.threads, "workers": args.workers,
        "http_batch_wait_s": args.http_batch_wait_ms / 1000 if args.http_batch_wait_ms is not None else None,
        "lsl_source_name": args.lsl_source[0] if args.lsl_source and len(args.lsl_source) == 1 else None,
        "lsl_sources": args.lsl_source if args.lsl_source and len(args.lsl_source) > 1 else None,
        "lsl_batch_wait_s": args.lsl_batch_wait_ms / 1000 if args.lsl_batch_wait_ms is not None else None,
        "lsl_batch_workers": args.lsl_batch_workers, "lsl_source_type": args.lsl_type,
        "lsl_output_name": args.lsl_output,
        "lsl_behavior_name": args.lsl_behavior_source, "lsl_hop_bins": args.hop,
        "lsl_max_lag_bins": args.max_lag, "lsl_calibrate_seconds": args.calibrate_seconds,
        "calibration_dir": args.calibration_dir,
    }.items() if v is not None}
    if args.lsl:
        overrides["lsl_decode"] = True
    if args.lsl_reverse:
        overrides["lsl_simulate"] = True
    if args.lsl_sample:
        overrides["lsl_sample"] = True
    if args.lsl_window_decode:
        overrides["lsl_incremental"] = False
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from alignnet.service.engines import check_artifact
    from alignnet.service.http.app import create_app

    settings = settings_from_args(args)
    key = settings.artifact_key.get_secret_value() if settings.artifact_key else None
    config = check_artifact(settings.artifact, settings.engine, key)  # a clear error now rather than a 503 later
    if settings.lsl_calibrate_seconds > 0:
        from alignnet.training.calibrate import zero_label_problem

        if problem := zero_label_problem(config):
            raise ValueError(f"--calibrate-seconds: {problem}")
    print(f"serving {settings.artifact} ({settings.engine}) on http://{args.host}:{args.port} "
          f"(docs: /docs, health: /health)" + ("; LSL bridge on" if settings.lsl_decode else ""), flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"bound to {args.host}: answering Host names {settings.allowed_hosts} (ALIGNNET_ALLOWED_HOSTS); /reload "
              "and /calibrate " + ("need the admin token" if settings.admin_token else "answer this machine only (set "
                                   "ALIGNNET_ADMIN_TOKEN to allow others)"), flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0
