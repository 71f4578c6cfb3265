"""The Python client for the cleanroom server (sync and asyncio, over HTTP/JSON).

Results are frozen dataclasses (``LaunchResult``, and the service's
``RunResult``, ``CleanroomInfo``, ``DoctorCheck``); streamed runs yield the
service's ``RunStarted``/``RunOutput``/``RunExit`` events; errors are raised as
the :mod:`cleanroom.errors` class matching the server's error code.
"""

from __future__ import annotations

from cleanroom.client._async import AsyncClient
from cleanroom.client._sync import Client
from cleanroom.client._wire import (
    HOST_ENV,
    DoctorReport,
    Endpoint,
    Health,
    LaunchResult,
    resolve_endpoint,
)

__all__ = [
    "HOST_ENV",
    "AsyncClient",
    "Client",
    "DoctorReport",
    "Endpoint",
    "Health",
    "LaunchResult",
    "resolve_endpoint",
]
