"""The values that cross the API: requests, results, run events (frozen dataclasses).

One definition serves the service, the server and both clients. Each field rule
(absolute paths, no NUL bytes, the timeout bound, a non-empty argv) is stated
once, as metadata on the field (see :mod:`cleanroom._fields`): requests check
their rules when built, the server has pydantic enforce the same rules and
publish them in the OpenAPI document, and clients parse responses strictly
with :func:`from_dict` (unknown keys are errors). Standard library only, so
the sync client stays fast to import.

The requests live in :mod:`cleanroom.models._requests`, the results and run
events in :mod:`cleanroom.models._results`; import them from here.
"""

from __future__ import annotations

from cleanroom._fields import from_dict, to_dict
from cleanroom._rules import MAX_STDIN_BYTES
from cleanroom.doctor import DoctorCheck
from cleanroom.models._requests import (
    MAX_LAUNCH_SECONDS,
    MAX_TIMEOUT_SECONDS,
    ExecRequest,
    LaunchOptions,
    LaunchRequest,
    RunRequest,
    TerminateRequest,
    encode_stdin,
)
from cleanroom.models._results import (
    Applied,
    ArtifactInfo,
    ChangeCounts,
    CleanroomInfo,
    CleanroomList,
    DoctorReport,
    ErrorBody,
    ErrorDetail,
    Health,
    LaunchResult,
    RunEvent,
    RunExit,
    RunOutput,
    RunResult,
    RunStarted,
    SandboxImage,
    SandboxResources,
    Terminated,
    WorkspaceUploaded,
)

__all__ = [
    "MAX_LAUNCH_SECONDS",
    "MAX_STDIN_BYTES",
    "MAX_TIMEOUT_SECONDS",
    "Applied",
    "ArtifactInfo",
    "ChangeCounts",
    "CleanroomInfo",
    "CleanroomList",
    "DoctorCheck",
    "DoctorReport",
    "ErrorBody",
    "ErrorDetail",
    "ExecRequest",
    "Health",
    "LaunchOptions",
    "LaunchRequest",
    "LaunchResult",
    "RunEvent",
    "RunExit",
    "RunOutput",
    "RunRequest",
    "RunResult",
    "RunStarted",
    "SandboxImage",
    "SandboxResources",
    "TerminateRequest",
    "Terminated",
    "WorkspaceUploaded",
    "encode_stdin",
    "from_dict",
    "to_dict",
]
