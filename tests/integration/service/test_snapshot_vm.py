"""Runs restored from a snapshot of a booted guest, on real QEMU guests (TCG here).

A cold run that makes the snapshot (into a private snapshot directory), then
restored runs and the cold fallback; every run packs its checks into one command.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cleanroom import paths
from cleanroom.backends.qemu import QemuBackend, QemuConfig, VerdictCache
from cleanroom.backends.qemu.sealed_ram import SEALS
from cleanroom.backends.qemu.snapshot import MEMORY_NAME, RAM_NAME
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
            # Its RAM is the server's sealed memfd, inherited and mapped privately
            # (by a QEMU running as a uid of its own when the tests run as root).
            ram_fds = [fd for fd, what in plan["inherited_fds"].items() if "sealed memfd" in what]
            assert len(ram_fds) == 1
            assert f"mem-path=/proc/self/fd/{ram_fds[0]},share=off" in " ".join(plan["argv"])
            assert isinstance(plan["vmm_uid"], int) == (os.geteuid() == 0)
            outs.append(result.stdout.splitlines())
        first, second = outs
        assert first[2] == second[2] == "hello from the host"
        assert len(first[0]) == 32
        assert first[0] != second[0], "restored guests repeat /dev/urandom"
        assert first[1] != second[1], "restored guests repeat Python random values"
        assert first[3] != second[3], "restored guests share a boot id"
        # The clock is today's, not the snapshot's (the RTC is read at configure).
        assert abs(int(second[4]) - time.time()) < 5
        # Both guests ran from one memfd, still sealed and still exactly ram.raw.
        held = qemu.snapshots.rams.held
        assert list(held) == [snap.key]
        assert fcntl.fcntl(held[snap.key], fcntl.F_GET_SEALS) == SEALS
        assert _fd_sha256(held[snap.key]) == snap.files[RAM_NAME].sha256

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


# What the guest sees of its workspace: every file's path and content, hashed in
# order, and whether the disk's first 4 KiB read through the kernel's cache of the
# block device equal the same bytes read from the device itself (O_DIRECT).
DISK_CHECK = r"""
import hashlib, json, mmap, os
dev = [line.split()[0] for line in open("/proc/mounts") if line.split()[1] == "/workspace"][0]
fd = os.open(dev, os.O_RDONLY)
cached = os.pread(fd, 4096, 0)
os.close(fd)
fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
os.preadv(fd, [buf], 0)
os.close(fd)
tree = hashlib.sha256()
for root, dirs, files in os.walk("/workspace"):
    dirs.sort()
    for name in sorted(files):
        path = os.path.join(root, name)
        tree.update(os.path.relpath(path, "/workspace").encode() + b"\0")
        tree.update(open(path, "rb").read())
print(json.dumps({"same": cached == bytes(buf), "tree": tree.hexdigest()}))
"""


def _fd_sha256(fd: int) -> str:
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _tree_digest(root: Path) -> str:
    tree = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        tree.update(str(path.relative_to(root)).encode() + b"\0")
        tree.update(path.read_bytes())
    return tree.hexdigest()


async def test_a_restored_guest_sees_its_own_workspace_disk_never_cached_blocks(
    qemu: QemuBackend, tmp_path: Path
) -> None:
    """The snapshot guest's kernel read the placeholder disk when it probed it at
    boot; a restored guest starts on a blank file that the host fills with the
    run's filesystem while the stream loads. What the guest then reads through
    its block cache must be exactly what is on the disk, and every file exactly
    the host's.

    Measured with the agent's BLKFLSBUF removed, this still passes: this kernel
    drops a block device's cache when its last opener closes it, and nothing
    holds the placeholder open across the snapshot. The flush guards the case
    where something does; this test guards the outcome whatever the reason."""
    ws = tmp_path / "repo"
    for i in range(300):
        d = ws / f"pkg{i // 30:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:03d}.bin").write_bytes(os.urandom(20_000 + i))
    (ws / "cleanroom.yaml").write_text(POLICY)
    (ws / "check.py").write_text(DISK_CHECK)
    expected = _tree_digest(ws)
    await qemu.warm()
    svc = Service(RuntimeConfig(qemu=QemuConfig(accel="tcg")), backends={"qemu": qemu})
    await svc.start()
    try:
        info = await svc.launch(ws, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs"))
        for _ in range(2):
            result = await svc.run(info.cleanroom_id, ["python3", "/workspace/check.py"])
            assert result.exit_code == 0, result.stderr
            record = json.loads((result.run_dir / RECORD_NAME).read_text())
            assert record["start"] == "restored", record["start_fallback"]
            assert record["workspace"]["method"] == "disk"
            assert isinstance(record["workspace_disk_ms"], float)
            got = json.loads(result.stdout)
            assert got == {"same": True, "tree": expected}
    finally:
        await svc.close()


async def test_a_privileged_qemu_restores_from_the_sealed_memfd_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``unprivileged: off`` QEMU runs as the server's user, and the snapshot
    and its restores are the same: RAM from the sealed memfd, mapped privately."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    config = QemuConfig(accel="tcg", launch_seconds=120, unprivileged=False)
    backend = QemuBackend(config, verdicts=VerdictCache(tmp_path / "verdicts.json"))
    await backend.prepare()
    assert backend.snapshots is not None
    assert backend.machine is not None
    assert not backend.machine.unprivileged
    backend.snapshots.cache = SnapshotCache(tmp_path / "snapshots")
    ws = tmp_path / "repo"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text(POLICY)
    (ws / "data.txt").write_text("hello from the host\n")
    svc = Service(RuntimeConfig(qemu=config), backends={"qemu": backend})
    await svc.start()
    try:
        snap = await backend.warm()
        assert snap.facts["ram"] == "sealed-memfd"
        info = await svc.launch(ws, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs"))
        result = await svc.run(info.cleanroom_id, ["sh", "-c", PROBE])
        assert result.exit_code == 0, result.stderr
        assert result.stdout.splitlines()[2] == "hello from the host"
        record = json.loads((result.run_dir / RECORD_NAME).read_text())
        assert record["start"] == "restored", record["start_fallback"]
        plan = json.loads(result.plan_path.read_text())
        assert plan["vmm_uid"] is None
        ram_fds = [fd for fd, what in plan["inherited_fds"].items() if "sealed memfd" in what]
        assert len(ram_fds) == 1
        assert f"mem-path=/proc/self/fd/{ram_fds[0]},share=off" in " ".join(plan["argv"])
        assert _fd_sha256(backend.snapshots.rams.held[snap.key]) == snap.files[RAM_NAME].sha256
    finally:
        await svc.close()
        await backend.close()
    assert backend.snapshots.rams.held == {}  # released with the backend


DISK_PROBE = (
    "dev=$(df /workspace | tail -n 1 | cut -d ' ' -f 1); "
    "cat /sys/block/${dev#/dev/}/size; "
    "dd if=/dev/zero of=/workspace/fill bs=1M 2>/dev/null; echo dd=$?; "
    "du -k /workspace/fill | cut -f 1"
)


async def test_a_restored_guest_gets_the_runs_own_disk_size(
    qemu: QemuBackend, tmp_path: Path
) -> None:
    """``resources.disk_mib`` other than the snapshot guest's: still restored, and the
    guest's kernel sees the run's size (the host announces it before the guest
    runs); filling the disk ends in ENOSPC within it."""
    disk_mib = 96
    ws = tmp_path / "repo"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text(POLICY + f"  resources:\n    disk_mib: {disk_mib}\n")
    await qemu.warm()
    svc = Service(RuntimeConfig(qemu=QemuConfig(accel="tcg")), backends={"qemu": qemu})
    await svc.start()
    try:
        info = await svc.launch(ws, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs"))
        result = await svc.run(info.cleanroom_id, ["sh", "-c", DISK_PROBE])
        record = json.loads((result.run_dir / RECORD_NAME).read_text())
        assert record["start"] == "restored", record["start_fallback"]
        assert record["resources"]["disk_mib"] == disk_mib
        sectors, dd, used_kib = result.stdout.split()
        assert int(sectors) * 512 == disk_mib << 20
        assert dd == "dd=1"  # no space left
        assert disk_mib * 1024 // 2 < int(used_kib) <= disk_mib * 1024
    finally:
        await svc.close()
