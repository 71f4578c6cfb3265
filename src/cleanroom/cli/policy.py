"""``cleanroom policy ...``: policy commands that need no server.

``cleanroom policy validate [-c DIR] [--json]`` locates and compiles the
directory's policy and prints its source, warnings, hash and normalised rules
(exit 0), or the error's stable code and every located problem (exit status:
the error's ``exit_code``). It then shows the policy under the runtime config
(``policy`` section): the isolation required, the effective maxima, and,
when a ``policy.ceiling`` is set, whether the policy is within it; a policy a
server would refuse for its excess is listed with every excess and exits with
``policy_conflict``'s status.
"""

# The policy compiler loads only when the command runs.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cleanroom.cli.options import Subcommands, add_command, add_group, add_json
from cleanroom.cli.output import print_json, report_error

if TYPE_CHECKING:
    from cleanroom.config import RuntimeConfig
    from cleanroom.policy import CompiledPolicy, Excess

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


def _effective(policy: CompiledPolicy, config: RuntimeConfig) -> dict[str, Any]:
    """What a server with ``config`` would hold this policy to."""
    from cleanroom.policy import Ceiling, strongest

    ceiling = config.policy.ceiling or Ceiling()
    caps = config.images

    def lowest(*values: float | None) -> float | None:
        given = [v for v in values if v is not None]
        return min(given) if given else None

    return {
        "isolation": strongest(policy.isolation, config.policy.isolation),
        "max": {
            "vcpus": lowest(caps.max_vcpus, ceiling.max_vcpus),
            "memory_mib": lowest(caps.max_memory_mib, ceiling.max_memory_mib),
            "disk_mib": lowest(caps.max_disk_mib, ceiling.max_disk_mib),
            "timeout_seconds": lowest(ceiling.max_timeout_seconds),
        },
        "resources": policy.resources.to_dict(),
    }


def _print_effective(effective: dict[str, Any], ceiling: dict[str, Any] | None) -> None:
    out = sys.stdout
    maxima = ", ".join(f"{k} {v:g}" for k, v in effective["max"].items() if v is not None)
    out.write(f"isolation required: {effective['isolation']}\n")
    out.write(f"maxima: {maxima}\n")
    if ceiling is None:
        out.write("ceiling: none (the runtime config sets no policy.ceiling)\n")
    elif not ceiling["excess"]:
        out.write(f"ceiling: within policy.ceiling ({ceiling['source']})\n")
    else:
        out.write(f"ceiling: beyond policy.ceiling ({ceiling['source']}):\n")
        for item in ceiling["excess"]:
            out.write(f"  excess {item['field']}: {item['message']}\n")


def _directory(text: str) -> Path:
    path = Path(text)
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return path


def _excess(policy: CompiledPolicy, config: RuntimeConfig) -> tuple[Excess, ...] | None:
    """The policy's excess over the ceiling (None: no ceiling)."""
    from cleanroom.policy import ceiling_excess

    ceiling = config.policy.ceiling
    return None if ceiling is None else ceiling_excess(policy, ceiling)


def _validate(args: argparse.Namespace) -> int:
    from cleanroom.config import load_config
    from cleanroom.errors import PolicyConflict
    from cleanroom.policy import load_policy

    policy = load_policy(args.directory)
    config = load_config()
    excess = _excess(policy, config)
    ceiling = (
        None
        if excess is None or config.policy.ceiling is None
        else {
            "source": str(config.source) if config.source else None,
            "ceiling": config.policy.ceiling.to_dict(),
            "within": not excess,
            "excess": [e.to_dict() for e in excess],
        }
    )
    effective = _effective(policy, config)
    if args.as_json:
        print_json(
            {
                "valid": True,
                "source": str(policy.source),
                "policy_hash": policy.policy_hash,
                "policy": policy.to_dict(),
                "warnings": list(policy.warnings),
                "effective": effective,
                "ceiling": ceiling,
            }
        )
    else:
        _print_human(policy)
        _print_effective(effective, ceiling)
    if excess:
        refused = PolicyConflict(
            "a server with this runtime config refuses the policy: it asks beyond policy.ceiling",
            details={"excess": [e.to_dict() for e in excess]},
        )
        return refused.exit_code if args.as_json else report_error(refused)
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
