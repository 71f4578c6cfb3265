"""``cleanroom token create|list|revoke``: the API tokens TCP listeners accept.

Works on the server's token file directly (see :mod:`cleanroom.tokens`); a
running server sees every change on its next request, so a revoked token is
refused at once, without a restart.
"""

# ruff: noqa: PLC0415 -- the token store loads when a command runs

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cleanroom.cli.options import Subcommands, add_command, add_group, add_json
from cleanroom.cli.output import print_json

__all__ = ["register"]


def _create(args: argparse.Namespace) -> int:
    from cleanroom.tokens import TokenStore

    token = TokenStore(args.file).create(args.name)
    if args.as_json:
        print_json({"name": args.name, "token": token})
    else:
        sys.stdout.write(token + "\n")
        sys.stderr.write(
            f"token {args.name!r} created; it is shown only now. "
            "Clients send it as CLEANROOM_TOKEN or --token-file FILE.\n"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    from cleanroom.tokens import TokenStore

    records = TokenStore(args.file).records()
    if args.as_json:
        print_json({"tokens": [{"name": r.name, "created_at": r.created_at} for r in records]})
    else:
        for record in records:
            sys.stdout.write(f"{record.name}\t{record.created_at}\n")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from cleanroom.tokens import TokenStore

    TokenStore(args.file).revoke(args.name)
    if args.as_json:
        print_json({"revoked": args.name})
    return 0


def _add_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        type=Path,
        default=None,
        metavar="FILE",
        help="The token file [default: the state directory's tokens.json]",
    )
    add_json(parser)


def register(commands: Subcommands) -> None:
    """Add ``token create``, ``token list`` and ``token revoke``."""
    group = add_group(commands, "token", "Manage the API tokens TCP listeners require.")
    create = add_command(
        group, "create", _create, "Create a token named NAME and print it (shown only once)."
    )
    create.add_argument("name", metavar="NAME")
    _add_file(create)
    listing = add_command(group, "list", _list, "List the tokens' names and creation times.")
    _add_file(listing)
    revoke = add_command(
        group, "revoke", _revoke, "Revoke the token named NAME (refused from the next request)."
    )
    revoke.add_argument("name", metavar="NAME")
    _add_file(revoke)
