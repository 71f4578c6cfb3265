"""The warm pool on real guests: hits, misses, fresh guests, refill, cleanup.

With a network manager, pooled guests boot on reserved network slots; the
uplink is a namespace these tests create (no route out), so the host's own
namespace is never touched. Snapshots are off: these tests count the QEMU
children of the pool, and one making a snapshot would be one more (pool
refills restored from a snapshot: tests/integration/network/test_network_restored_vm.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from test_service_vm import POLICY, _vmm_children

from cleanroom.config import NetworkConfig, PoolConfig, QemuConfig, RuntimeConfig
from cleanroom.service import Service

pytestmark = [pytest.mark.vm, pytest.mark.image]

UPLINK_NS = f"crt-poolup-{os.getpid() % 0xFFFF:04x}"


def _run_namespaces() -> list[str]:
    """This test run's namespaces (tests/conftest.py sets the prefix; never a live server's)."""
    out = subprocess.run(
        ["ip", "-j", "netns", "list"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return (
        [
            e["name"]
            for e in json.loads(out)
            if e["name"].startswith(os.environ.get("CLEANROOM_NETNS_PREFIX", "crn-"))
        ]
        if out
        else []
    )


@pytest.fixture
def network() -> Iterator[NetworkConfig]:
    subprocess.run(["ip", "netns", "add", UPLINK_NS], check=True)
    try:
        yield NetworkConfig(uplink_netns=UPLINK_NS, resolvers=("192.0.2.53",))
    finally:
        subprocess.run(["ip", "netns", "del", UPLINK_NS], check=False)


@pytest.fixture
async def pooled(
    tmp_path: Path, network: NetworkConfig, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    # A private state directory: a service's start clears its pool directory.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    config = RuntimeConfig(
        qemu=QemuConfig(accel="tcg", launch_seconds=120, snapshots=False),
        network=network,
        pool=PoolConfig(size=2),
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
    records = [await pooled.run_record(r.run_id) for r in (first, second)]
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
    assert (await pooled.run_record(third.run_id))["pool"] in ("hit", "miss")
    await pool.wait_ready(2)
    await pooled.terminate(info.cleanroom_id)


async def test_close_destroys_pooled_guests_and_their_slots(
    tmp_path: Path, network: NetworkConfig
) -> None:
    config = RuntimeConfig(
        qemu=QemuConfig(accel="tcg", snapshots=False), network=network, pool=PoolConfig(size=1)
    )
    svc = Service(config)
    await svc.start()
    pool = svc.pool("qemu")
    assert pool is not None
    try:
        await pool.wait_ready(1)
        assert len(_vmm_children()) == 1
        assert len(_run_namespaces()) == 1
    finally:
        await svc.close()
    assert not _vmm_children()
    assert not _run_namespaces()
