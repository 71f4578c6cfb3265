"""The warm pool on real guests: hits, misses, fresh guests, refill, cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_service_vm import POLICY, _vmm_children

from cleanroom.config import PoolConfig, QemuConfig, RuntimeConfig
from cleanroom.service import Service

pytestmark = [pytest.mark.vm, pytest.mark.image]


@pytest.fixture
async def pooled(tmp_path: Path) -> AsyncIterator[Service]:
    config = RuntimeConfig(
        qemu=QemuConfig(accel="tcg", launch_seconds=120), pool=PoolConfig(size=2)
    )
    svc = Service(config)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


async def test_pool_hits_are_fresh_distinct_guests_and_refill(
    pooled: Service, tmp_path: Path
) -> None:
    ws = tmp_path / "repo"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text(POLICY)
    pool = pooled.pool("qemu")
    assert pool is not None
    await pool.wait_ready(2)
    idle = _vmm_children()
    assert len(idle) == 2

    info = await pooled.launch(ws)
    script = (
        "test -e /etc/marker && echo SEEN; echo x > /etc/marker; "
        "cat /proc/sys/kernel/random/boot_id"
    )
    first, second = await asyncio.gather(
        pooled.run(info.cleanroom_id, ["sh", "-c", script]),
        pooled.run(info.cleanroom_id, ["sh", "-c", script]),
    )
    records = [pooled.run_record(r.run_id) for r in (first, second)]
    assert [r["pool"] for r in records] == ["hit", "hit"]
    # Two different guests, neither saw the other's rootfs write.
    assert first.stdout != second.stdout
    assert "SEEN" not in first.stdout + second.stdout
    assert first.plan_path.parent == first.run_dir
    assert (first.run_dir / "console.log").exists()
    # Both guests are gone after their runs; the pool refills in the background.
    assert not (idle & _vmm_children())
    third = await pooled.run(info.cleanroom_id, ["sh", "-c", script])
    assert "SEEN" not in third.stdout
    assert pooled.run_record(third.run_id)["pool"] in ("hit", "miss")
    await pool.wait_ready(2)
    await pooled.terminate(info.cleanroom_id)


async def test_close_destroys_pooled_guests(tmp_path: Path) -> None:
    config = RuntimeConfig(qemu=QemuConfig(accel="tcg"), pool=PoolConfig(size=1))
    svc = Service(config)
    await svc.start()
    pool = svc.pool("qemu")
    assert pool is not None
    await pool.wait_ready(1)
    assert len(_vmm_children()) == 1
    await svc.close()
    assert not _vmm_children()
