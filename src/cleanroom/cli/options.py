"""The command line's shared vocabulary: argparse options and the handler contract.

Every command module exposes ``register(commands)``, adding its parsers to the
``commands`` sub-parser action with ``set_defaults(handler=...)``. A
:data:`Handler` receives the parsed namespace and returns the process exit
status; :class:`~cleanroom.errors.CleanroomError` escaping a handler is printed
as ``error[code]: message`` by the entry point.

This module (like every command module at import time) loads only the standard
library: what a command needs beyond that is imported when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "HOST_HELP",
    "Handler",
    "Subcommands",
    "add_command",
    "add_cwd",
    "add_group",
    "add_host",
    "add_json",
    "connection",
    "non_negative_int",
]

Handler = Callable[[argparse.Namespace], int]
"""A command: the parsed arguments in, the exit status out."""

Subcommands = Any
"""The object ``ArgumentParser.add_subparsers()`` returns (private in typeshed)."""

HOST_HELP = (
    "Server address: unix:///path, tcp://HOST:PORT or http://HOST:PORT "
    "(default: $CLEANROOM_HOST, else the local socket)."
)


def add_command(
    commands: Subcommands, name: str, handler: Handler, help_text: str
) -> argparse.ArgumentParser:
    """A command parser; ``help_text`` is its summary in the list and its description."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=help_text
    )
    parser.set_defaults(handler=handler)
    return parser


def add_group(commands: Subcommands, name: str, help_text: str) -> Subcommands:
    """A command group (``cleanroom NAME COMMAND``); add its commands to the result.

    Given without a command, the group prints its own help (see ``app.run``).
    """
    group = commands.add_parser(name, help=help_text, description=help_text)
    group.set_defaults(group_parser=group)
    return group.add_subparsers(title="commands", metavar="COMMAND")


def add_host(parser: argparse.ArgumentParser) -> None:
    """``--host ADDRESS`` (into ``host``; ``None`` when not given) and the TCP
    server's credentials: ``--token-file``, ``--tls-fingerprint``, ``--tls-ca``."""
    parser.add_argument("--host", metavar="ADDRESS", help=HOST_HELP)
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="API token for a TCP server, from FILE (mode 0600) [default: $CLEANROOM_TOKEN].",
    )
    parser.add_argument(
        "--tls-fingerprint",
        metavar="SHA256",
        help="Pin the server's TLS certificate by the fingerprint `serve` printed "
        "[default: $CLEANROOM_TLS_FINGERPRINT]; makes tcp:// speak TLS.",
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="Verify the server's TLS certificate with this CA file [default: $CLEANROOM_TLS_CA].",
    )


def connection(args: argparse.Namespace) -> dict[str, Any]:
    """The client keyword arguments ``add_host`` options gave (token file, TLS trust)."""
    return {
        "token_file": getattr(args, "token_file", None),
        "tls_fingerprint": getattr(args, "tls_fingerprint", None),
        "tls_ca": getattr(args, "tls_ca", None),
    }


def add_json(parser: argparse.ArgumentParser, help_text: str = "Print JSON.") -> None:
    """``--json`` (into ``as_json``)."""
    parser.add_argument("--json", dest="as_json", action="store_true", help=help_text)


def add_cwd(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``-c/--cwd DIR`` (into ``cwd``; default: the current directory)."""
    parser.add_argument(
        "-c", "--cwd", type=Path, default=Path(), metavar="DIR", help=f"{help_text} [default: .]"
    )


def non_negative_int(text: str) -> int:
    """An argparse ``type`` accepting integers >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value
