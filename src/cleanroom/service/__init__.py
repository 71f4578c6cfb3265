"""Contexts, runs and run records: the layer between the server and the backends."""

from __future__ import annotations

from cleanroom.service.api import ServiceAPI
from cleanroom.service.types import (
    CleanroomInfo,
    DoctorCheck,
    EventSink,
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
    "ServiceAPI",
]
