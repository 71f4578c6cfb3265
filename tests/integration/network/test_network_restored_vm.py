"""Networked guests restored from the snapshot with a NIC, and pool refills that
restore instead of booting: the service, QEMU, the run's TAP, namespace,
nftables table and DNS filter, against the fake internet.

The snapshots are made first (into a private snapshot directory); every run
then packs its checks into one command.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from network_fixtures import DNS_ADDR, PROBE, Internet

from cleanroom.backends.qemu import QemuBackend, QemuConfig, VerdictCache
from cleanroom.backends.qemu.snapshot import SNAPSHOT_MAC
from cleanroom.config import NetworkConfig, PoolConfig, RuntimeConfig
from cleanroom.images.snapshots import SnapshotCache
from cleanroom.service import LaunchOptions, Service

pytestmark = [pytest.mark.vm, pytest.mark.image, pytest.mark.network]

POLICY = """
version: 1
sandbox:
  network:
    default: deny
    allow:
      - host: 192.0.2.10
        ports: [8080]
"""

CHECKS = r"""
import json, sys
sys.path.insert(0, "/workspace")
import probe
mac = open("/sys/class/net/eth0/address").read().strip()
print(json.dumps({
    "mac": mac,
    "allowed": probe.tcp_probe("192.0.2.10", 8080),
    "unlisted": probe.tcp_probe("192.0.2.30", 8080),
}))
"""


@pytest.fixture
async def qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[QemuBackend]:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    backend = QemuBackend(
        QemuConfig(accel="tcg", launch_seconds=120),
        verdicts=VerdictCache(tmp_path / "verdicts.json"),
    )
    await backend.prepare()
    assert backend.snapshots is not None
    # A private snapshot directory: the test never touches the shared cache's.
    backend.snapshots.cache = SnapshotCache(tmp_path / "snapshots")
    try:
        yield backend
    finally:
        await backend.close()


def _checked(stdout: str) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(stdout)
    assert got["allowed"]["ok"], got
    assert got["allowed"]["reply"] == "tcp:192.0.2.10:8080"
    assert not got["unlisted"]["ok"], got
    # The agent gave eth0 the run's own MAC, not the one saved in the snapshot.
    assert got["mac"] != SNAPSHOT_MAC
    return got


async def test_networked_runs_and_pool_refills_are_restored(
    qemu: QemuBackend, internet: Internet, tmp_path: Path
) -> None:
    snap = await qemu.warm()  # both snapshots: without and with a NIC
    assert qemu.snapshots is not None
    networked = await qemu.snapshots.find_quiet(nic=True)
    assert networked is not None
    assert networked.key != snap.key
    assert networked.facts["nic"] is True
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == sorted(
        [snap.key, networked.key]
    )

    ws = tmp_path / "repo"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text(POLICY)
    shutil.copy(PROBE, ws / "probe.py")
    (ws / "checks.py").write_text(CHECKS)
    config = RuntimeConfig(
        qemu=QemuConfig(accel="tcg", launch_seconds=120),
        network=NetworkConfig(uplink_netns=internet.netns, resolvers=(DNS_ADDR,)),
        pool=PoolConfig(size=1),
    )
    svc = Service(config, backends={"qemu": qemu})
    await svc.start()
    try:
        info = await svc.launch(ws, options=LaunchOptions(run_dir=tmp_path / "runs"))
        pool = svc.pool("qemu")
        assert pool is not None
        await pool.wait_ready(1)
        # One run takes the pooled guest (restored on a network slot), the other
        # misses and is restored with the run's own network.
        runs = await asyncio.gather(
            svc.run(info.cleanroom_id, ["python3", "/workspace/checks.py"]),
            svc.run(info.cleanroom_id, ["python3", "/workspace/checks.py"]),
        )
        records = [await svc.run_record(r.run_id) for r in runs]
        for result in runs:
            assert result.exit_code == 0, result.stderr
        macs = {_checked(r.stdout)["mac"] for r in runs}
        assert len(macs) == 2
        by_start = {r["start"]: r for r in records}
        assert set(by_start) == {"warm", "restored"}, [r["start_fallback"] for r in records]
        assert by_start["warm"]["pool_guest"]["start"] == "restored"
        assert by_start["restored"]["start_fallback"] is None
        assert by_start["restored"]["network"]["allowed"] >= 1
        plan = json.loads(runs[records.index(by_start["restored"])].plan_path.read_text())
        assert plan["restored_from"]["snapshot"] == networked.key

        # The refill is restored too.
        await pool.wait_ready(1)
        again = await svc.run(info.cleanroom_id, ["python3", "/workspace/checks.py"])
        assert again.exit_code == 0, again.stderr
        _checked(again.stdout)
        record = await svc.run_record(again.run_id)
        assert (record["start"], record["pool_guest"]["start"]) == ("warm", "restored")
        assert record["pool_guest"]["boot_ms"] < 30_000
    finally:
        await svc.close()
