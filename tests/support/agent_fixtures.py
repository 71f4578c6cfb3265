"""Fixtures: the real guest agent as a subprocess (see agent_harness)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_harness import Agent, AgentFactory, make_guest_lib


@pytest.fixture(scope="session")
def guest_lib() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="cr-agent-lib-"))
    try:
        yield make_guest_lib(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def agents(guest_lib: Path, tmp_path: Path) -> AsyncIterator[AgentFactory]:
    factory = AgentFactory(guest_lib, tmp_path)
    try:
        yield factory
    finally:
        await factory.cleanup()


@pytest.fixture
async def agent(agents: AgentFactory) -> Agent:
    return await agents.start()
