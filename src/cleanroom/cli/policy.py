"""``cleanroom policy ...``: policy commands that need no server.

``cleanroom policy validate [-c DIR] [--json]`` locates and compiles the
directory's policy and prints its source, warnings, hash and normalised rules
(exit 0), or the error's stable code and every located problem (exit status:
the error's ``exit_code``).
"""

# The policy compiler loads only when the command runs.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cleanroom.cli.options import Subcommands, add_command, add_group, add_json
from cleanroom.cli.output import print_json

if TYPE_CHECKING:
    from cleanroom.policy import CompiledPolicy

__all__ = ["register"]


def _print_human(policy: CompiledPolicy) -> None:
    out = sys.stdout
    for warning in policy.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    out.write(f"source: {policy.source}\n")
    out.write(f"policy_hash: {policy.policy_hash}\n")
    out.write(f"network default: {policy.default}\n")
    out.write(f"allow ({len(policy.allow)}):\n")
    for index, rule in enumerate(policy.allow):
        reason = f"  # {rule.reason}" if rule.reason else ""
        out.write(f"  allow[{index}] {rule.label()}{reason}\n")
    out.write(f"deny ({len(policy.deny)}):\n")
    for index, deny_rule in enumerate(policy.deny):
        ports = "" if deny_rule.ports is not None else "  (every port)"
        out.write(f"  deny[{index}] {deny_rule.label()}{ports}\n")
    out.write("valid\n")


def _directory(text: str) -> Path:
    path = Path(text)
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return path


def _validate(args: argparse.Namespace) -> int:
    from cleanroom.policy import load_policy

    policy = load_policy(args.directory)
    if args.as_json:
        print_json(
            {
                "valid": True,
                "source": str(policy.source),
                "policy_hash": policy.policy_hash,
                "policy": policy.to_dict(),
                "warnings": list(policy.warnings),
            }
        )
    else:
        _print_human(policy)
    return 0


def register(commands: Subcommands) -> None:
    """Add the ``policy`` command group."""
    policy_commands = add_group(
        commands, "policy", "Inspect and validate a repository's cleanroom.yaml."
    )
    validate = add_command(
        policy_commands,
        "validate",
        _validate,
        "Compile the directory's policy; print its hash and normalised rules, or every problem.",
    )
    validate.add_argument(
        "-c",
        "--chdir",
        "--directory",
        dest="directory",
        type=_directory,
        default=Path(),
        metavar="DIR",
        help="Repository directory holding cleanroom.yaml (default: the current directory).",
    )
    add_json(validate, "Print one JSON object instead of text.")
