"""What the command modules share: kept apart from ``alignnet.cli.main``, which imports every command module, so
that no command module imports ``main`` back."""

from __future__ import annotations

import argparse
import shlex


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, recorded next to results."""
    return "alignnet " + " ".join(map(shlex.quote, args.argv))
