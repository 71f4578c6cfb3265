"""``cleanroom runs prune``: repair and prune run directories in the state directory.

Works on the files directly (no server needed, and safe beside a running one):
a run whose owner still holds its lock is never touched (see
:mod:`cleanroom.service.repair`). Limits default to the runtime config's
``limits.runs_max_*``.
"""

# The config and the service's repair module load only when the command runs.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
from pathlib import Path

from cleanroom.cli.options import Subcommands, add_command, add_group, add_json, non_negative_int
from cleanroom.cli.output import print_json

__all__ = ["register"]


def _prune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cleanroom import paths
    from cleanroom.config import load_config
    from cleanroom.service.repair import prune_runs, repair_runs, retention

    keep = retention(load_config().limits)
    if args.max_age_days is not None:
        keep = replace(keep, max_age_seconds=args.max_age_days * 86400)
    if args.max_count is not None:
        keep = replace(keep, max_count=args.max_count)
    if args.max_bytes is not None:
        keep = replace(keep, max_bytes=args.max_bytes)
    root: Path = args.root if args.root is not None else paths.state_dir() / "runs"
    repaired = repair_runs(root)
    pruned = prune_runs(root, keep)
    if args.as_json:
        print_json({"root": str(root), "repaired": repaired, "pruned": pruned})
    else:
        print(f"{root}: repaired {len(repaired)}, pruned {len(pruned)}")  # noqa: T201
    return 0


def register(commands: Subcommands) -> None:
    """Add ``runs prune``."""
    group = add_group(commands, "runs", "Manage run directories.")
    parser = add_command(
        group,
        "prune",
        _prune,
        "Repair runs a dead server left behind, then delete finished runs past the limits.",
    )
    parser.add_argument("--max-age-days", type=float, default=None, metavar="DAYS")
    parser.add_argument("--max-count", type=non_negative_int, default=None, metavar="N")
    parser.add_argument("--max-bytes", type=non_negative_int, default=None, metavar="BYTES")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        metavar="DIR",
        help="Run directory root [default: the state directory's runs/]",
    )
    add_json(parser)
