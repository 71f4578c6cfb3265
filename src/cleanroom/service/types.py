"""Values that cross the service boundary (requests, results, streamed run events).

The values themselves are the wire models of :mod:`cleanroom.models` (one
definition for the service, the server and the clients); this module adds the
service's event callback type and the inputs of one run beside its command.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cleanroom.models import (
    CleanroomInfo,
    DoctorCheck,
    ExecRequest,
    LaunchOptions,
    RunEvent,
    RunExit,
    RunOutput,
    RunRequest,
    RunResult,
    RunStarted,
)
from cleanroom.service.terminal import Terminal

__all__ = [
    "CleanroomInfo",
    "DoctorCheck",
    "EventSink",
    "LaunchOptions",
    "RunEvent",
    "RunExit",
    "RunOptions",
    "RunOutput",
    "RunResult",
    "RunStarted",
]

EventSink = Callable[[RunEvent], Awaitable[None]]
"""An async callback receiving a run's events in order; it must not block for long."""


@dataclass(frozen=True)
class RunOptions:
    """How one run goes, beside its command (every field optional).

    The service checks these by the wire's rules (``RunRequest``) when the run
    starts, not when this is built.
    """

    timeout: float | None = None
    """Seconds before the command's process group is killed (None: the runtime default)."""
    env: Mapping[str, str] | None = field(default=None, repr=False)
    """Laid over the guest's defaults; values are never recorded."""
    stdin: bytes | None = field(default=None, repr=False)
    """The command's standard input, then EOF (None: empty)."""
    artifacts: Sequence[str] = ()
    """Relative globs of workspace files to keep after the run."""
    terminal: Terminal | None = None
    """Run on a pseudo-terminal fed by this (``stdin`` unused)."""

    @classmethod
    def of(cls, request: RunRequest | ExecRequest, terminal: Terminal | None = None) -> RunOptions:
        """The options a wire request asks for; with ``terminal``, its input replaces
        the request's stdin."""
        return cls(
            timeout=request.timeout_seconds,
            env=request.env,
            stdin=request.stdin_bytes if terminal is None else None,
            artifacts=request.artifacts or (),
            terminal=terminal,
        )
