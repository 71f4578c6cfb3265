"""``cleanroom policy ...``: policy commands that need no server.

``cleanroom policy validate [-c DIR] [--json]`` locates and compiles the
directory's policy and prints its source, warnings, hash and normalised rules
(exit 0), or the error's stable code and every located problem (exit status:
the error's ``exit_code``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cleanroom.cli.output import print_json, report_error
from cleanroom.errors import CleanroomError
from cleanroom.policy import CompiledPolicy, load_policy

__all__ = ["register"]

policy_app = typer.Typer(
    name="policy",
    help="Inspect and validate a repository's cleanroom.yaml.",
    no_args_is_help=True,
)


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


@policy_app.command("validate")
def validate(
    directory: Annotated[
        Path,
        typer.Option(
            "-c",
            "--chdir",
            "--directory",
            help="Repository directory holding cleanroom.yaml (default: the current directory).",
            file_okay=False,
        ),
    ] = Path(),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of text.")
    ] = False,
) -> None:
    """Compile the directory's policy; print its hash and normalised rules, or every problem."""
    try:
        policy = load_policy(directory)
    except CleanroomError as exc:
        raise typer.Exit(report_error(exc, as_json=as_json)) from exc
    if as_json:
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


def register(app: typer.Typer) -> None:
    """Add the ``policy`` command group to ``app``."""
    app.add_typer(policy_app, name="policy")
