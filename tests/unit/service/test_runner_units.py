"""The runner and the pool against real agent processes (no VMM): answer first,
release after, refill without slowing the run that emptied the pool."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_backend import AgentProcessBackend
from no_network import NoNetwork

from cleanroom.config import RuntimeConfig
from cleanroom.errors import CleanroomError
from cleanroom.service import Service
from cleanroom.service import pool as pool_module
from cleanroom.service.finalize import Finalizers
from cleanroom.service.pool import WarmGuest, WarmPool
from cleanroom.service.record import RECORD_NAME


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "cleanroom.yaml").write_text("version: 1\n")
    (path / "data.txt").write_text("data\n")
    return path


async def _let_the_loop_run(rounds: int = 50) -> None:
    """Give every ready task ``rounds`` turns: what can finish without I/O or a timer
    has finished after this, deterministically (no wall-clock wait)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def _record_on_disk(run_dir: Path) -> dict[str, object]:
    value: dict[str, object] = json.loads((run_dir / RECORD_NAME).read_text())
    return value


async def test_answer_comes_before_release_and_the_record_waits_for_it(
    service: Service, backend: AgentProcessBackend, repo: Path, tmp_path: Path
) -> None:
    gate = backend.release_gate = asyncio.Event()
    result = await service.exec(repo, ["sh", "-c", "pwd; ls; echo oops >&2; exit 3"])
    guest = backend.guests[-1]
    # The command ran in the agent's workspace, which received the repository.
    assert (result.exit_code, result.stderr) == (3, "oops\n")
    assert result.stdout.split() == [str(guest.workspace), "cleanroom.yaml", "data.txt"]
    # Answered: the guest is killed, but its release is still held.
    assert guest.killed
    assert not guest.destroyed
    on_disk = _record_on_disk(result.run_dir)
    assert (on_disk["status"], on_disk["exit_code"], on_disk["cleanup"]) == ("exited", 3, "pending")
    assert on_disk["guest_teardown_ms"] is None
    reading = asyncio.ensure_future(service.run_record(result.run_id))
    await _let_the_loop_run()  # reading the file needs no I/O wait: only the release holds it
    assert not reading.done()  # the record is not final yet
    gate.set()
    record = await reading
    assert guest.destroyed
    assert record["cleanup"] == "done"
    assert isinstance(record["guest_teardown_ms"], float)
    assert record == _record_on_disk(result.run_dir)


async def test_close_waits_for_every_release(
    backend: AgentProcessBackend, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = Service(RuntimeConfig(), backends={"qemu": backend}, network=NoNetwork())
    await svc.start()
    gate = backend.release_gate = asyncio.Event()
    results = await asyncio.gather(*(svc.exec(repo, ["true"]) for _ in range(2)))
    draining = asyncio.Event()
    finalizers = svc._finalizers  # observe where close waits
    drain = finalizers.drain

    async def observed_drain() -> None:
        draining.set()
        await drain()

    monkeypatch.setattr(finalizers, "drain", observed_drain)
    closing = asyncio.ensure_future(svc.close())
    await asyncio.wait_for(draining.wait(), 30)
    await _let_the_loop_run()
    assert finalizers.pending == 2
    assert not closing.done()
    gate.set()
    await closing
    assert all(g.destroyed for g in backend.guests)
    assert all(_record_on_disk(r.run_dir)["cleanup"] == "done" for r in results)


async def test_failed_release_is_recorded(
    service: Service, backend: AgentProcessBackend, repo: Path
) -> None:
    backend.destroy_error = CleanroomError("could not remove the run's disks")
    result = await service.exec(repo, ["true"])
    assert result.exit_code == 0  # the answer stands
    record = await service.run_record(result.run_id)
    assert record["cleanup"] == "failed"
    assert record["cleanup_error"] == {
        "code": "internal_error",
        "message": "could not remove the run's disks",
    }


async def test_finalizers_track_by_run_and_drain() -> None:
    finalizers = Finalizers()
    gate = asyncio.Event()
    finished: list[str] = []

    async def release(name: str) -> None:
        await gate.wait()
        finished.append(name)

    finalizers.start("run-a", release("a"))
    with pytest.raises(ValueError, match="already"):
        finalizers.start("run-a", release("again"))
    assert await finalizers.wait("run-unknown") is True
    assert await finalizers.wait("run-a", timeout=0.05) is False
    assert finalizers.pending == 1
    gate.set()
    await finalizers.drain()
    assert (finished, finalizers.pending) == (["a"], 0)


async def _launched(backend: AgentProcessBackend, count: int, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while len(backend.guests) < count:  # noqa: ASYNC110 -- polling a plain list
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _claimed(
    backend: AgentProcessBackend, root: Path, grace: float, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[WarmPool, WarmGuest]]:
    """A one-guest pool (refill grace ``grace`` s) whose ready guest has been taken."""
    monkeypatch.setattr(pool_module, "REFILL_GRACE", grace)
    pool = WarmPool(backend, size=1, root=root, launch_seconds=30)
    pool.start()
    try:
        await pool.wait_ready(1, timeout=30)
        # The self-test extracted its archive into a scratch directory and removed it.
        assert list(backend.guests[0].workspace.iterdir()) == []
        warm = pool.take()
        assert warm is not None
        assert warm.guest is backend.guests[0]
        yield pool, warm
        await warm.client.close()
        await warm.guest.destroy()
    finally:
        await pool.close()


async def test_refill_waits_until_the_claiming_run_is_done(
    backend: AgentProcessBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _claimed(backend, tmp_path / "pool", 60.0, monkeypatch) as (pool, _):
        await _let_the_loop_run()  # a refill started now would have launched a guest
        assert len(backend.guests) == 1  # no boot while the run uses its guest
        pool.released()
        await _launched(backend, 2)
        await pool.wait_ready(1, timeout=30)
        assert pool.hits == 1


async def test_refill_starts_after_the_grace_period(
    backend: AgentProcessBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _claimed(backend, tmp_path / "pool", 0.3, monkeypatch):
        assert len(backend.guests) == 1
        await _launched(backend, 2)  # without released(): a long run does not starve the pool
