"""A real server shared by the tests of one module (see :func:`module_server`).

A module opts in by importing the fixtures that stand for the suite's
per-test ones: ``from shared_server import shared_host`` gives its tests a
``host`` fixture bound to the module's server (``shared_service``,
``shared_backend``: ``service``, ``backend``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cleanroom.server import ListenAddress
from cleanroom.service import Service
from cleanroom.testing import AgentProcessBackend, ServerThread, agent_service

__all__ = ["SharedServer", "module_server", "shared_backend", "shared_host", "shared_service"]


@dataclass(frozen=True)
class SharedServer:
    """One server for a whole test module: its backend, service and ``unix://`` address."""

    backend: AgentProcessBackend
    service: Service
    host: str


@pytest.fixture(scope="module")
def module_server() -> Iterator[SharedServer]:
    """A real server over the real service, started once for the test module.

    Building the server's routes costs about a second on a busy machine (its
    schemas are generated per app), so a module whose tests need no fresh
    service opts in by binding its ``backend``/``service``/``host`` fixtures to
    this one. The service starts, repairs and closes in a state directory of
    its own; each test's runs still go under that test's ``$XDG_STATE_HOME``
    (a run's place is chosen at launch).
    """
    path = Path(tempfile.mkdtemp(prefix="crt-"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("XDG_STATE_HOME", str(path / "state"))
            backend = AgentProcessBackend()
            service = agent_service(backend)
            sock = path / "run" / "s.sock"
            with ServerThread(service, ListenAddress(scheme="unix", path=sock)):
                yield SharedServer(backend, service, f"unix://{sock}")
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="backend")
def shared_backend(module_server: SharedServer) -> AgentProcessBackend:
    """The module server's backend (a test that changes it restores it: monkeypatch)."""
    return module_server.backend


@pytest.fixture(name="service")
def shared_service(module_server: SharedServer) -> Service:
    """The module server's service."""
    return module_server.service


@pytest.fixture(name="host")
def shared_host(module_server: SharedServer) -> str:
    """``unix://`` address of the module server."""
    return module_server.host
