"""The Python client for the cleanroom server (sync and asyncio, over HTTP/JSON).

Results are the frozen wire models of :mod:`cleanroom.models` (``LaunchResult``,
``RunResult``, ``CleanroomInfo``, ``DoctorCheck``…); streamed runs yield its
``RunStarted``/``RunOutput``/``RunExit`` events; errors are raised as
the :mod:`cleanroom.errors` class matching the server's error code.

``Client`` speaks HTTP through the standard library (fast to import, for the
CLI); ``AsyncClient`` through httpx, loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cleanroom.client._endpoint import HOST_ENV, Endpoint, resolve_endpoint
from cleanroom.client._sync import Client
from cleanroom.models import DoctorReport, Health, LaunchResult

if TYPE_CHECKING:
    from cleanroom.client._async import AsyncClient

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


def __getattr__(name: str) -> Any:
    # The asyncio client runs on httpx, whose import costs more than the rest
    # of a CLI process; load it only when asked for.
    if name == "AsyncClient":
        from cleanroom.client._async import AsyncClient  # noqa: PLC0415

        return AsyncClient
    raise AttributeError(name)
