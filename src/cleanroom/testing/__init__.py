"""Test support for cleanroom and for anyone who builds on it or writes a backend.

- :class:`AgentProcessBackend`: a backend whose guests are the real guest agent
  running as host processes (no VMM, no isolation), and :func:`agent_service`,
  the real :class:`~cleanroom.service.Service` over it;
- :class:`ServerThread`: the real HTTP server in a background thread
  (``python -m cleanroom.testing.server`` for one in its own process);
- :func:`check_backend_conformance` and its scenarios: what every VM backend must do.

The backend and conformance modules load on first use (they pull in the
service and agent layers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cleanroom.testing.backend import AgentProcessBackend, AgentProcessGuest, UnavailableBackend
    from cleanroom.testing.conformance import (
        check_backend_conformance,
        commands_and_discarded_writes,
        launch_deadline_too_short,
    )
    from cleanroom.testing.server import ServerThread
    from cleanroom.testing.service import NoNetwork, agent_service, runs_with_status

__all__ = [
    "AgentProcessBackend",
    "AgentProcessGuest",
    "NoNetwork",
    "ServerThread",
    "UnavailableBackend",
    "agent_service",
    "check_backend_conformance",
    "commands_and_discarded_writes",
    "launch_deadline_too_short",
    "runs_with_status",
]

_HOMES = {
    "AgentProcessBackend": "backend",
    "AgentProcessGuest": "backend",
    "UnavailableBackend": "backend",
    "NoNetwork": "service",
    "agent_service": "service",
    "runs_with_status": "service",
    "ServerThread": "server",
    "check_backend_conformance": "conformance",
    "commands_and_discarded_writes": "conformance",
    "launch_deadline_too_short": "conformance",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(name)
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(f"cleanroom.testing.{home}"), name)
