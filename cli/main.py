"""The ``alignnet`` command: one entry point, one module per command group (``alignnet.cli.*``).

The packages it drives expose functions and classes; argparse, printing and exit codes live only here.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from alignnet.model.artifacts import ArtifactError, ExportError
from alignnet.recordings.dataset import DataError
from alignnet.service.http.launcher import ServiceUnavailable


def build_parser() -> argparse.ArgumentParser:
    from alignnet.cli import bench, data, demo, falcon, models, replay, serve, train

    parser = argparse.ArgumentParser(
        prog="alignnet",
        description="AlignNet-BCI: cross-day alignment of motor-cortex spikes and behavior, served in real time.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (data, models, train, bench, serve, demo, replay, falcon):
        group.add_parser(sub)
    return parser


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded next to results
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # SIGTERM (docker stop, kill, timeout) unwinds like Ctrl-C, so the commands' clean-up runs: subprocesses
    # stopped, LSL streams closed; uvicorn installs its own handler while it serves
    signal.signal(signal.SIGTERM, _terminate)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the CLI's own output
    try:
        return int(args.func(args) or 0)
    except (DataError, FileNotFoundError, ValueError, ArtifactError, ExportError, ServiceUnavailable) as e:
        print(f"alignnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
