"""``cleanroom doctor``: is this host (and this directory) ready to run cleanrooms?

Client-side checks (the server answers; the policy in the directory compiles)
followed by the server's host checks (``GET /v1/doctor``) when a server
answers, or the same host and backend checks run here when none does (named
``local`` in the report). Exits 1 when any check fails.
"""

# The client, the policy compiler and rich load only when the command runs.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal

from cleanroom.cli.options import Subcommands, add_command, add_cwd, add_host, add_json
from cleanroom.cli.output import print_json
from cleanroom.errors import CleanroomError, PolicyNotFound
from cleanroom.service.types import DoctorCheck

__all__ = ["client_checks", "register"]

_MARK = {"pass": "[green]pass[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]fail[/red]"}


def _policy_check(directory: Path) -> DoctorCheck:
    from cleanroom.policy import load_policy

    try:
        policy = load_policy(directory)
    except PolicyNotFound as exc:
        return DoctorCheck("policy", "warn", f"no policy in {directory}", exc.details)
    except CleanroomError as exc:
        return DoctorCheck("policy", "fail", exc.message, exc.details)
    summary = f"{policy.source} compiles ({len(policy.allow)} allow rules), {policy.policy_hash}"
    return DoctorCheck("policy", "pass", summary, {"warnings": list(policy.warnings)})


def _local_checks() -> list[DoctorCheck]:
    """The server's host and backend checks, run in this process."""
    import asyncio

    from cleanroom.config import load_config
    from cleanroom.service.doctor import local_checks

    try:
        config = load_config()
    except CleanroomError as exc:
        return [DoctorCheck("config", "fail", exc.message, exc.details)]
    checks = asyncio.run(local_checks(config))
    return [
        DoctorCheck("local", "pass", "no server answers: these checks ran in this process"),
        *checks,
    ]


def client_checks(host: str | None, directory: Path) -> tuple[list[DoctorCheck], bool]:
    """The client-side checks, then the server's; and whether a server answered."""
    from cleanroom.client import Client

    checks: list[DoctorCheck] = []
    answered = False
    try:
        with Client(host) as client:
            health = client.health()
            checks.append(
                DoctorCheck("server", "pass", f"{client.endpoint.url} answers (v{health.version})")
            )
            answered = True
            checks.append(_policy_check(directory))
            checks.extend(client.doctor().checks)
    except CleanroomError as exc:
        if not answered:
            from cleanroom.client import resolve_endpoint

            endpoint = resolve_endpoint(host)
            # With no address configured, `cleanroom exec` starts a server itself.
            status: Literal["warn", "fail"] = "warn" if endpoint.is_default else "fail"
            reason = f"no server answers at {endpoint.url}"
            if endpoint.is_default:
                reason += " (cleanroom exec starts one)"
            checks.append(DoctorCheck("server", status, reason, exc.details))
            checks.append(_policy_check(directory))
            checks.extend(_local_checks())
        else:
            checks.append(DoctorCheck("server-checks", "fail", exc.message, exc.details))
    return checks, answered


def _doctor(args: argparse.Namespace) -> int:
    checks, _ = client_checks(args.host, Path(args.cwd).absolute())
    ok = all(c.status != "fail" for c in checks)
    if args.as_json:
        print_json(
            {
                "ok": ok,
                "checks": [
                    {
                        "name": c.name,
                        "status": c.status,
                        "reason": c.reason,
                        "details": c.details,
                    }
                    for c in checks
                ],
            }
        )
    else:
        from rich.console import Console
        from rich.markup import escape

        console = Console(file=sys.stdout, highlight=False)
        for check in checks:
            console.print(f"{_MARK[check.status]}  {escape(check.name)}: {escape(check.reason)}")
    return 0 if ok else 1


def register(commands: Subcommands) -> None:
    """Add ``doctor``."""
    parser = add_command(
        commands,
        "doctor",
        _doctor,
        "Check that this host and directory are ready; exit 1 if a check fails.",
    )
    add_host(parser)
    add_cwd(parser, "Directory to check.")
    add_json(parser)
