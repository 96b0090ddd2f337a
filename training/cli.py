"""The ``alignnet`` command: one entry point, thin subcommands."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from model.artifacts import ArtifactError
from service.loadtest import ServiceUnavailable
from training.data import DataError
from training.export import ExportError


def build_parser() -> argparse.ArgumentParser:
    from clients import demo, replay
    from service import cli as service_cli
    from training import data_cli, model_cli, train_cli

    parser = argparse.ArgumentParser(
        prog="alignnet",
        description="AlignNet-BCI: cross-day alignment of motor-cortex spikes and behavior, served in real time.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_cli.add_parser(sub)
    model_cli.add_parser(sub)
    train_cli.add_parser(sub)
    service_cli.add_parser(sub)
    demo.add_parser(sub)
    replay.add_parser(sub)
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
