"""Values that cross the service boundary (requests, results, streamed run events).

These are what the server serialises and the client deserialises; nothing here
knows about HTTP or about a VMM.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CleanroomInfo",
    "DoctorCheck",
    "EventSink",
    "LaunchOptions",
    "RunEvent",
    "RunExit",
    "RunOutput",
    "RunResult",
    "RunStarted",
]


@dataclass(frozen=True)
class LaunchOptions:
    """Per-context options given at launch (all optional)."""

    run_dir: Path | None = None
    """Root under which each run's directory is created (default: the state dir's ``runs/``)."""
    read_only_workspace: bool | None = None
    """Mount /workspace read-only in the guest (default: runtime config ``workspace.access``)."""
    launch_seconds: float | None = None
    """How long a guest may take to become ready (default: the backend's config)."""


@dataclass(frozen=True)
class CleanroomInfo:
    """A launched context: its policy is compiled once and frozen for its lifetime."""

    cleanroom_id: str
    backend: str
    cwd: Path
    policy_source: Path
    policy_hash: str
    run_dir_root: Path
    read_only_workspace: bool
    created_at: str
    """RFC 3339 UTC timestamp."""
    runs: tuple[str, ...] = ()
    """Ids of the runs started in this context, oldest first."""


@dataclass(frozen=True)
class RunResult:
    """The outcome of one command.

    ``stdout``/``stderr`` hold at most the service's capture limit (1 MiB each,
    decoded as UTF-8 with replacement); the complete logs are in ``run_dir``.
    """

    run_id: str
    cleanroom_id: str
    exit_code: int
    stdout: str
    stderr: str
    run_dir: Path
    plan_path: Path
    signal: str | None = None
    """Name of the signal that killed the command (``exit_code`` is then 128+N)."""
    stdout_truncated: bool = False
    stderr_truncated: bool = False


@dataclass(frozen=True)
class RunStarted:
    """First event of a streamed run."""

    run_id: str
    cleanroom_id: str
    run_dir: Path
    type: Literal["started"] = "started"


@dataclass(frozen=True)
class RunOutput:
    """A chunk of the command's output, delivered as it is produced."""

    stream: Literal["stdout", "stderr"]
    data: bytes
    type: Literal["output"] = "output"


@dataclass(frozen=True)
class RunExit:
    """Last event of a successful streamed run (errors are raised instead)."""

    result: RunResult
    type: Literal["exit"] = "exit"


RunEvent = RunStarted | RunOutput | RunExit
EventSink = Callable[[RunEvent], Awaitable[None]]
"""An async callback receiving a run's events in order; it must not block for long."""


@dataclass(frozen=True)
class DoctorCheck:
    """One line of ``cleanroom doctor``."""

    name: str
    status: Literal["pass", "warn", "fail"]
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
