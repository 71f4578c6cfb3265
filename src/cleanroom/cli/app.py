"""The ``cleanroom`` entry point: one argparse parser built from one module per command group.

Each command module exposes ``register(commands)`` (see
:mod:`cleanroom.cli.options`); this module only wires them up and turns
:class:`~cleanroom.errors.CleanroomError` into a printed code and a documented
exit status. argparse rather than a framework: ``cleanroom exec`` is on the
path of every sandboxed command, and its start-up time is part of each run's
latency, so parsing costs only the standard library and command modules defer
their heavy imports (the client, the policy compiler, the image builder, rich,
the server) to the command that needs them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cleanroom import __version__
from cleanroom.cli import (
    doctor_cmd,
    exec_cmd,
    image,
    policy,
    runs_cmd,
    server_cmds,
    token_cmd,
)
from cleanroom.cli.output import report_error
from cleanroom.errors import CleanroomError

__all__ = ["build_parser", "main", "run"]

_USAGE_ERROR = 2
_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command and its options."""
    parser = argparse.ArgumentParser(
        prog="cleanroom",
        description="Run commands in fresh microVMs under a repository's network policy.",
    )
    parser.add_argument("--version", action="version", version=f"cleanroom {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    exec_cmd.register(commands)
    doctor_cmd.register(commands)
    server_cmds.register(commands)
    policy.register(commands)
    image.register(commands)
    runs_cmd.register(commands)
    token_cmd.register(commands)
    return parser


def run(argv: Sequence[str]) -> int:
    """Parse ``argv`` (without the program name), run the command; the exit status.

    A command group given without a command prints its help (status 2), as
    does no command at all; argparse's own usage errors exit with 2 too.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        group: argparse.ArgumentParser = getattr(args, "group_parser", parser)
        group.print_help()
        return _USAGE_ERROR
    try:
        status: int = handler(args)
    except CleanroomError as exc:
        return report_error(exc, as_json=bool(getattr(args, "as_json", False)))
    except KeyboardInterrupt:
        sys.stderr.write("cleanroom: interrupted\n")
        return _INTERRUPTED
    return status


def main() -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:]))
