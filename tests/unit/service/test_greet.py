"""One boot-and-greet for cold runs and the pool: the caller owns the guest from launch,
and a warm boot that fails releases its slot, guest and directory."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from agent_backend import AgentProcessBackend
from test_network_seam import FakeLayer

from cleanroom.agent.protocol import AGENT_VERSION
from cleanroom.backends.base import Guest, GuestSpec
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.service.greet import boot_and_greet
from cleanroom.service.network import bind_network
from cleanroom.service.pool import WarmPool


async def test_greeted_guest_answers(backend: AgentProcessBackend, tmp_path: Path) -> None:
    owned: list[Guest] = []
    greeted = await boot_and_greet(backend, GuestSpec("run-1", tmp_path, 20.0), owned.append)
    assert owned == [greeted.guest]
    assert greeted.info.agent_version == AGENT_VERSION
    assert 0 < greeted.connect_ms <= greeted.ready_ms
    await greeted.client.close()


async def test_silent_agent_is_launch_failure_and_the_caller_owns_the_guest(
    backend: AgentProcessBackend, tmp_path: Path
) -> None:
    owned: list[Guest] = []

    def launched(guest: Guest) -> None:
        owned.append(guest)
        os.kill(backend.guests[-1].proc.pid, signal.SIGSTOP)  # it will never say hello

    with pytest.raises(RuntimeLaunchFailed) as caught:
        await boot_and_greet(backend, GuestSpec("run-1", tmp_path, 0.5), launched)
    assert caught.value.code == "runtime_launch_failed"
    assert caught.value.details["launch_seconds"] == 0.5
    assert "console_tail" in caught.value.details
    # Not destroyed behind the caller's back: the caller registered it and releases it.
    assert owned == [backend.guests[-1]]
    assert not backend.guests[-1].destroyed


async def test_failed_warm_boot_releases_slot_guest_and_directory(tmp_path: Path) -> None:
    layer = FakeLayer()
    backend = AgentProcessBackend(fail_launch=True)
    pool = WarmPool(
        backend, size=1, root=tmp_path / "pool", launch_seconds=5, network=bind_network(layer)
    )
    pool.start()
    try:
        async with asyncio.timeout(10):
            while ("teardown", layer.calls[0][1] if layer.calls else "") not in layer.calls:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await pool.close()
    (reserve, teardown) = layer.calls
    assert reserve[0] == "reserve"
    assert teardown == ("teardown", reserve[1])
    assert list((tmp_path / "pool").iterdir()) == []
    assert pool.ready == 0
