"""The ``cleanroom`` entry point: builds the Typer app from one module per command group.

Each command module exposes ``register(app)``; this module only wires them up
and turns :class:`~cleanroom.errors.CleanroomError` into a printed code and a
documented exit status.
"""

from __future__ import annotations

import sys

import typer

from cleanroom.cli import image as image_cmds
from cleanroom.cli import policy as policy_cmds
from cleanroom.cli import server_cmds
from cleanroom.cli.output import report_error
from cleanroom.errors import CleanroomError

__all__ = ["app", "main"]

app = typer.Typer(
    name="cleanroom",
    help="Run commands in fresh microVMs under a repository's network policy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

policy_cmds.register(app)
image_cmds.register(app)
server_cmds.register(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CleanroomError as exc:
        sys.exit(report_error(exc))
