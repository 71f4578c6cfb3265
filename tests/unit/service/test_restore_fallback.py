"""A run tries a restore first and never fails because of it (real agent processes,
no VMM): the record says how the guest started and why it was not restored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_backend import AgentProcessBackend, AgentProcessGuest

from cleanroom import paths
from cleanroom.backends.base import Guest, GuestSpec, NoRestore
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.service import LaunchOptions, Service
from cleanroom.service.pool import WarmPool
from cleanroom.service.record import RECORD_NAME


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
        await warm.client.close()
        await warm.guest.destroy()
        warm.discard_dir()
        pool.released()
    finally:
        await pool.close()
        for guest in backend.restored:
            await guest.destroy()
        await backend.close()
