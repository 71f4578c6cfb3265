"""Service-level fixtures: a backend of real agent processes and a started service over it.

They stand in for the suite-wide ``backend`` and ``service`` (made for server threads,
which start and close the service themselves).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from agent_backend import AgentProcessBackend
from no_network import NoNetwork

from cleanroom.config import RuntimeConfig
from cleanroom.service import Service


@pytest.fixture
async def backend() -> AsyncIterator[AgentProcessBackend]:
    """Guests are agent processes; any left are destroyed after the test."""
    be = AgentProcessBackend()
    try:
        yield be
    finally:
        await be.close()


@pytest.fixture
async def service(backend: AgentProcessBackend) -> AsyncIterator[Service]:
    """The real service, started, over ``backend`` (as ``qemu``) and no network."""
    svc = Service(RuntimeConfig(), backends={"qemu": backend}, network=NoNetwork())
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()
