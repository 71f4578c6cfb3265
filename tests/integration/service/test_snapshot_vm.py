"""Runs restored from a snapshot of a booted guest, on real QEMU guests (TCG here).

A cold run that makes the snapshot (into a private snapshot directory), then
restored runs and the cold fallback; every run packs its checks into one command.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cleanroom import paths
from cleanroom.backends.qemu import QemuBackend, QemuConfig, VerdictCache
from cleanroom.backends.qemu.snapshot import MEMORY_NAME
from cleanroom.config import RuntimeConfig
from cleanroom.images.snapshots import SnapshotCache
from cleanroom.service import LaunchOptions, Service
from cleanroom.service.record import RECORD_NAME

pytestmark = [pytest.mark.vm, pytest.mark.image]

POLICY = "version: 1\nsandbox:\n  network:\n    default: deny\n"

# Kernel CRNG bytes, a Python `random` value, the agent-made workspace mount,
# the kernel's boot id and the wall clock, one per line.
PROBE = (
    "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
    "python3 -c 'import random; print(random.getrandbits(64))'; "
    "cat /workspace/data.txt; cat /proc/sys/kernel/random/boot_id; date +%s"
)


@pytest.fixture
async def qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[QemuBackend]:
    # A private state directory: run records and stagings of this test only.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    config = QemuConfig(accel="tcg", launch_seconds=120)
    backend = QemuBackend(config, verdicts=VerdictCache(tmp_path / "verdicts.json"))
    await backend.prepare()
    assert backend.snapshots is not None
    # A private snapshot directory: the test never touches the shared cache's.
    backend.snapshots.cache = SnapshotCache(tmp_path / "snapshots")
    try:
        yield backend
    finally:
        await backend.close()


async def test_snapshot_made_on_first_use_restored_runs_unique_bad_one_boots_cold(
    qemu: QemuBackend, tmp_path: Path
) -> None:
    ws = tmp_path / "repo"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text(POLICY)
    (ws / "data.txt").write_text("hello from the host\n")
    svc = Service(RuntimeConfig(qemu=QemuConfig(accel="tcg")), backends={"qemu": qemu})
    await svc.start()
    try:
        info = await svc.launch(ws, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs"))
        # The first run finds no snapshot: it boots cold, and one is made meanwhile.
        first_run = await svc.run(info.cleanroom_id, ["cat", "/workspace/data.txt"])
        assert first_run.stdout == "hello from the host\n"
        record = json.loads((first_run.run_dir / RECORD_NAME).read_text())
        assert record["start"] == "cold"
        assert record["start_fallback"] == (
            "no snapshot for this image and guest shape yet; making it now"
        )
        assert qemu.snapshots is not None
        snap = await qemu.warm()  # waits for the one being made
        assert qemu.snapshots.made_ms is not None
        assert snap.path.parent == tmp_path / "snapshots"
        assert snap.facts["memory_mib"] == 256
        assert "vmgenid" in str(snap.facts["devices"])
        assert (await qemu.warm()).key == snap.key  # found, not made again
        await asyncio.sleep(6)  # so that a clock left at the snapshot's time shows

        outs: list[list[str]] = []
        for _ in range(2):
            result = await svc.run(info.cleanroom_id, ["sh", "-c", PROBE])
            assert result.exit_code == 0, result.stderr
            record = json.loads((result.run_dir / RECORD_NAME).read_text())
            assert record["start"] == "restored", record["start_fallback"]
            assert record["start_fallback"] is None
            assert isinstance(record["restore_ms"], float)
            assert record["workspace"]["method"] == "disk"
            plan = json.loads(result.plan_path.read_text())
            assert plan["restored_from"]["snapshot"] == snap.key
            outs.append(result.stdout.splitlines())
        first, second = outs
        assert first[2] == second[2] == "hello from the host"
        assert len(first[0]) == 32
        assert first[0] != second[0], "restored guests repeat /dev/urandom"
        assert first[1] != second[1], "restored guests repeat Python random values"
        assert first[3] != second[3], "restored guests share a boot id"
        # The clock is today's, not the snapshot's (the RTC is read at configure).
        assert abs(int(second[4]) - time.time()) < 5

        # A snapshot whose stream no longer matches its manifest is refused
        # before use; the run boots cold and the record says why.
        memory = snap.file(MEMORY_NAME)
        damaged = tmp_path / "damaged"
        shutil.copyfile(memory, damaged)
        with damaged.open("r+b") as fh:
            fh.seek(4096)
            fh.write(b"\xff" * 64)
        damaged.replace(memory)
        cold = await svc.run(info.cleanroom_id, ["cat", "/workspace/data.txt"])
        assert cold.exit_code == 0
        assert cold.stdout == "hello from the host\n"
        record = json.loads((cold.run_dir / RECORD_NAME).read_text())
        assert record["start"] == "cold"
        assert "does not match its sha256" in record["start_fallback"]
    finally:
        await svc.close()
