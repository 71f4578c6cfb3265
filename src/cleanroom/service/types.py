"""Values that cross the service boundary (requests, results, streamed run events).

The values themselves are the wire models of :mod:`cleanroom.models` (one
definition for the service, the server and the clients); this module adds the
service's event callback type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cleanroom.models import (
    CleanroomInfo,
    DoctorCheck,
    LaunchOptions,
    RunEvent,
    RunExit,
    RunOutput,
    RunResult,
    RunStarted,
)

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

EventSink = Callable[[RunEvent], Awaitable[None]]
"""An async callback receiving a run's events in order; it must not block for long."""
