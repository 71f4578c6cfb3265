"""What ``cleanroom exec`` sends into a run (environment, stdin) and does with what comes
back (the diff, artifacts, applying the changes).

Environment, as docker takes it: ``-e NAME=VALUE``; ``-e NAME`` passes the
host's value (left out when the host has none); ``--env-file FILE`` holds
``NAME=VALUE`` or ``NAME`` lines (``#`` comments and blank lines skipped,
values taken literally); ``-e`` wins over the file. Values are never printed.
Standard input is read only with ``-i``, up to the API's cap (512 KiB).

Standard library only at import time, like every command module.
"""

# ruff: noqa: PLC0415 -- the client is imported when a command runs

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cleanroom.errors import CleanroomError, InvalidRequest
from cleanroom.models import MAX_STDIN_BYTES

if TYPE_CHECKING:
    from cleanroom.client import Client
    from cleanroom.models import RunResult

__all__ = [
    "add_run_inputs",
    "add_run_outputs",
    "after_run",
    "read_env",
    "read_stdin",
]

_STDIN_CAP = MAX_STDIN_BYTES


def add_run_inputs(parser: argparse.ArgumentParser, *, tty: bool = True) -> None:
    """``-e/--env``, ``--env-file``, ``-i/--interactive`` (and ``-t/--tty`` with ``tty``)."""
    parser.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="Set an environment variable in the command (NAME alone: the host's value). "
        "Repeatable. Values are never recorded.",
    )
    parser.add_argument(
        "--env-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="Read NAME=VALUE (or NAME) lines from FILE; -e wins.",
    )
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="Pass this process's standard input to the command (at most 512 KiB), then EOF; "
        "without it the command's stdin is empty.",
    )
    if not tty:
        return
    parser.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="Run the command on a pseudo-terminal driven by this terminal (use as -it): "
        "typing, window size and Ctrl-C reach it; exits with its code.",
    )


def add_run_outputs(parser: argparse.ArgumentParser) -> None:
    """``--diff FILE``, ``--apply``, ``--artifact GLOB``, ``--out DIR``."""
    parser.add_argument(
        "--diff",
        type=Path,
        metavar="FILE",
        help="Write the workspace changes to FILE as a git-format binary patch.",
    )
    parser.add_argument(
        "--apply",
        action="store_true",
        help="After a run that exits 0, apply its workspace changes to the host directory "
        "(refused with workspace_conflict, nothing written, when a changed file was also "
        "modified on the host meanwhile).",
    )
    parser.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="GLOB",
        help="Keep workspace files matching GLOB (relative; *, ?, **) in the run directory's "
        "artifacts/. Repeatable.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="Also copy the artifacts into DIR.",
    )


def _entry(item: str, source: Mapping[str, str], env: dict[str, str], where: str) -> None:
    name, sep, value = item.partition("=")
    if not name or "\x00" in name:
        # The item may hold a value: never echo it.
        raise InvalidRequest(f"{where}: an environment variable needs a non-empty NAME")
    if sep:
        env[name] = value
    elif name in source:
        env[name] = source[name]


def read_env(
    items: Sequence[str], files: Sequence[Path], source: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """The environment ``-e`` items and ``--env-file`` files ask for (None: none asked).

    Raises ``InvalidRequest`` for an unreadable file or an empty name.
    """
    if not items and not files:
        return None
    host = os.environ if source is None else source
    env: dict[str, str] = {}
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"cannot read env file {path}: {exc}") from exc
        for number, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                _entry(line, host, env, f"{path}:{number}")
    for item in items:
        _entry(item, host, env, "-e")
    return env


def read_stdin(interactive: bool, stream: BinaryIO | None = None) -> bytes | None:
    """This process's stdin (``-i``), at most 512 KiB; None without ``-i``."""
    if not interactive:
        return None
    source = stream if stream is not None else sys.stdin.buffer
    data = source.read(_STDIN_CAP + 1)
    if len(data) > _STDIN_CAP:
        raise InvalidRequest(
            f"standard input is larger than {_STDIN_CAP} bytes (the API's cap); "
            "put large input in the workspace instead"
        )
    return data


def _say(message: str) -> None:
    sys.stderr.write(f"cleanroom: {message}\n")
    sys.stderr.flush()


def _safe_target(out: Path, path: str) -> Path:
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise CleanroomError(f"the server listed an artifact path that is not safe: {path!r}")
    return out.joinpath(*parts)


def after_run(client: Client, result: RunResult, args: argparse.Namespace) -> int:
    """The post-run steps asked for (diff, artifacts to ``--out``, apply); 0 or an
    error's exit status (the error is printed)."""
    from cleanroom.cli.output import report_error

    try:
        if args.diff is not None:
            patch = client.run_diff(result.run_id)
            args.diff.write_bytes(patch)
            _say(f"wrote the workspace diff ({len(patch)} bytes) to {args.diff}")
        if args.out is not None:
            for art in result.artifacts:
                target = _safe_target(args.out, art.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(client.run_artifact(result.run_id, art.path))
            _say(f"copied {len(result.artifacts)} artifact(s) to {args.out}")
        if result.artifacts_caps_hit:
            _say("artifacts were capped: " + ", ".join(result.artifacts_caps_hit))
        if args.apply:
            if result.exit_code != 0:
                _say(f"not applying the changes: the command exited {result.exit_code}")
            else:
                applied = client.apply_changes(result.run_id)
                _say(
                    f"applied the changes to {args.cwd}: {applied.written} written, "
                    f"{applied.removed} removed, {applied.chmodded} mode changes"
                )
    except CleanroomError as exc:
        return report_error(exc)
    except OSError as exc:
        return report_error(CleanroomError(f"cannot write {exc.filename}: {exc.strerror}"))
    return 0
