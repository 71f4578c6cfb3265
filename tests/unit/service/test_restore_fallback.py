"""A run tries a restore first and never fails because of it (real agent processes,
no VMM): the record says how the guest started and why it was not restored."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_backend import AgentProcessBackend, AgentProcessGuest

from cleanroom import paths
from cleanroom.backends.base import Guest, GuestSpec, NoRestore
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.service import LaunchOptions, Service
from cleanroom.service.pool import (
    POLISHED_PASSES,
    RESTORED_SELF_TEST_ROUNDS,
    SELF_TEST_ROUNDS,
    WarmPool,
)
from cleanroom.service.record import RECORD_NAME
from cleanroom.service.run.transfer import EMPTY_TAR


class _BrokenGuest(AgentProcessGuest):
    """A restored guest whose snapshot does not load."""

    async def open_channel(self, deadline: float) -> tuple[object, object]:  # type: ignore[override]
        self._parent.close()
        raise RuntimeLaunchFailed("the snapshot did not load in time")


@dataclass
class RestoringBackend(AgentProcessBackend):
    """Restores by starting an agent process, or fails in the way ``mode`` says."""

    mode: str = "ok"
    restored: list[AgentProcessGuest] = field(default_factory=list)

    async def restore(self, spec: GuestSpec) -> Guest | NoRestore:
        if self.mode == "none":
            return NoRestore("no snapshot for this image yet")
        if self.mode == "raise":
            raise RuntimeLaunchFailed("could not start QEMU")
        guest = (_BrokenGuest if self.mode == "broken" else AgentProcessGuest)(spec)
        self.restored.append(guest)
        return guest


@pytest.fixture
async def backend() -> AsyncIterator[RestoringBackend]:
    be = RestoringBackend()
    try:
        yield be
    finally:
        for guest in be.restored:
            await guest.destroy()
        await be.close()


@pytest.mark.parametrize(
    ("mode", "start", "fallback"),
    [
        ("ok", "restored", None),
        ("none", "cold", "no snapshot for this image yet"),
        ("raise", "cold", "restore failed: could not start QEMU"),
        ("broken", "cold", "restore failed: the snapshot did not load in time"),
    ],
)
async def test_restore_first_then_cold(
    service: Service,
    backend: RestoringBackend,
    tmp_path: Path,
    mode: str,
    start: str,
    fallback: str | None,
) -> None:
    backend.mode = mode
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cleanroom.yaml").write_text("version: 1\n")
    (repo / "data.txt").write_text("payload\n")
    info = await service.launch(
        repo, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs")
    )
    result = await service.run(info.cleanroom_id, ["cat", "data.txt"])
    assert (result.exit_code, result.stdout) == (0, "payload\n")
    record = await service.run_record(result.run_id)  # once the run is released
    assert record == json.loads((result.run_dir / RECORD_NAME).read_text())
    assert (record["start"], record["start_fallback"]) == (start, fallback)
    assert record["cleanup"] == "done"
    launched = len(backend.guests)
    assert launched == (0 if mode == "ok" else 1)
    for guest in backend.restored:
        assert guest.destroyed  # a failed restore is destroyed at once, a used one at the end


@pytest.mark.parametrize(("mode", "restored", "booted"), [("ok", 1, 0), ("broken", 1, 1)])
async def test_pool_refills_restore_first(
    tmp_path: Path, mode: str, restored: int, booted: int
) -> None:
    backend = RestoringBackend(mode=mode)
    pool = WarmPool(backend, size=1, root=tmp_path / "pool", launch_seconds=5)
    pool.start()
    try:
        await pool.wait_ready(timeout=30)
        warm = pool.take()
        assert warm is not None
        assert (len(backend.restored), len(backend.guests)) == (restored, booted)
        assert warm.guest is (backend.restored if booted == 0 else backend.guests)[0]
        assert warm.restored is (booted == 0)
        assert warm.fallback == (
            None if booted == 0 else "restore failed: the snapshot did not load in time"
        )
        least = RESTORED_SELF_TEST_ROUNDS if booted == 0 else SELF_TEST_ROUNDS
        passes = await warm.claim()
        assert passes is not None
        assert least <= passes <= POLISHED_PASSES
        await warm.client.close()
        await warm.guest.destroy()
        warm.discard_dir()
        pool.released()
    finally:
        await pool.close()
        for guest in backend.restored:
            await guest.destroy()
        await backend.close()


async def _eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():  # noqa: ASYNC110 - nothing signals these conditions
            await asyncio.sleep(0.01)


async def _ready_pool(tmp_path: Path, backend: RestoringBackend) -> WarmPool:
    pool = WarmPool(backend, size=1, root=tmp_path / "pool", launch_seconds=5)
    pool.start()
    await pool.wait_ready(timeout=30)
    return pool


async def _release(pool: WarmPool, backend: RestoringBackend) -> None:
    await pool.close()
    for guest in backend.restored:
        await guest.destroy()
    await backend.close()


async def test_a_waiting_guest_is_polished_to_the_full_passes(tmp_path: Path) -> None:
    backend = RestoringBackend()
    pool = await _ready_pool(tmp_path, backend)
    try:
        polish = pool._ready[0].polish
        assert polish is not None
        await _eventually(lambda: polish.passes == POLISHED_PASSES)
        warm = pool.take()
        assert warm is not None
        assert await warm.claim() == POLISHED_PASSES
        await warm.client.close()
        await warm.guest.destroy()
    finally:
        await _release(pool, backend)


async def test_a_claim_stops_the_polish_between_two_requests(tmp_path: Path) -> None:
    backend = RestoringBackend()
    pool = await _ready_pool(tmp_path, backend)
    try:
        warm = pool.take()  # at once: its polish has just begun
        assert warm is not None
        passes = await warm.claim()
        assert passes is not None
        assert RESTORED_SELF_TEST_ROUNDS <= passes < POLISHED_PASSES
        assert warm.polish is not None
        assert warm.polish.failed is None
        # The agent is idle and whole: the run's own requests work.
        outputs: list[bytes] = []

        async def keep(stream: str, data: bytes) -> None:
            outputs.append(data)

        await warm.client.send_workspace([EMPTY_TAR], read_only=False)
        status = await warm.client.exec(["echo", "run"], on_output=keep)
        assert (status.exit_code, b"".join(outputs)) == (0, b"run\n")
        await warm.client.close()
        await warm.guest.destroy()
    finally:
        await _release(pool, backend)


async def test_a_guest_whose_polish_failed_is_not_handed_out(tmp_path: Path) -> None:
    backend = RestoringBackend()
    pool = await _ready_pool(tmp_path, backend)
    try:
        first = pool._ready[0]
        assert first.polish is not None
        await first.client.close()  # its polish fails at its next request
        await _eventually(lambda: first.polish is not None and first.polish.failed is not None)
        assert pool.take() is None  # a miss: the broken guest is discarded
        await pool.wait_ready(timeout=30)  # and replaced
        assert pool._ready[0] is not first
        assert first.guest.exited() is not None  # destroyed
    finally:
        await _release(pool, backend)


async def test_a_guest_whose_polish_is_stuck_or_failed_is_given_back(tmp_path: Path) -> None:
    """A run never waits on a stuck polish for long, nor runs on a broken guest: the
    claim says unfit, and the pool destroys the guest and counts a miss."""
    backend = RestoringBackend()
    pool = await _ready_pool(tmp_path, backend)
    try:
        stuck = pool.take()
        assert stuck is not None
        assert stuck.polish is not None
        assert isinstance(stuck.guest, AgentProcessGuest)
        os.kill(stuck.guest.proc.pid, signal.SIGSTOP)  # mid-polish: its request never ends
        assert await stuck.claim(timeout=0.5) is None
        assert stuck.polish.failed is None  # it did not fail: it was given up on
        pool.discard(stuck)
        assert (pool.hits, pool.misses) == (0, 1)
        await pool.wait_ready(timeout=30)  # replaced
        failed = pool.take()
        assert failed is not None
        assert failed.polish is not None
        await failed.client.close()  # its next polish request fails
        assert await failed.claim() is None
        pool.discard(failed)
        await _eventually(lambda: stuck.guest.exited() is not None)
        await _eventually(lambda: failed.guest.exited() is not None)
    finally:
        await _release(pool, backend)
