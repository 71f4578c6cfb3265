"""The Firecracker guest keeps its serial console (the VMM's stdout) within the cap.

No firecracker binary runs here: a stand-in VMM (a shell script) floods its
stdout as a guest flooding ttyS0 would, then idles; the guest class, its disks,
its process handling and the bounded console reader are the real ones.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cleanroom.backends.base import GuestSpec
from cleanroom.backends.console import truncation_marker
from cleanroom.backends.firecracker.config import FirecrackerLaunch
from cleanroom.backends.firecracker.guest import FirecrackerGuest, FirecrackerMachine

LIMIT = 64 * 1024
FLOOD = 8 << 20


def _machine(tmp_path: Path) -> FirecrackerMachine:
    vmm = tmp_path / "fake-firecracker"
    vmm.write_text(f"#!/bin/sh\nhead -c {FLOOD} /dev/zero\necho flood-done >&2\nexec sleep 60\n")
    vmm.chmod(0o755)
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(b"\0" * 4096)
    launch = FirecrackerLaunch(vmlinux=tmp_path / "vmlinux", initrd=None, rootfs=rootfs)
    return FirecrackerMachine(binary=str(vmm), launch=launch)


async def test_a_console_flood_is_capped_and_read_to_the_end(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = GuestSpec("run-fc", run_dir, 30.0, console_log_bytes=LIMIT, disk_mib=64)
    fds_before = _sockets()
    guest = await FirecrackerGuest.start(_machine(tmp_path), spec)
    try:
        vmm_log = run_dir / "vmm.log"
        for _ in range(400):  # the stand-in finishes its flood only if it is read
            if b"flood-done" in vmm_log.read_bytes():
                break
            await asyncio.sleep(0.05)
        assert b"flood-done" in vmm_log.read_bytes()
        assert guest.exited() is None
        console = guest.console_path.read_bytes()
        assert console == bytes(LIMIT) + truncation_marker(LIMIT)
    finally:
        await guest.destroy()
    assert guest.exited() is not None
    assert not (run_dir / "workspace.ext4").exists()
    # The reader's socket is closed with the guest: no descriptor left behind.
    assert _sockets() <= fds_before


def _sockets() -> set[int]:
    out = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if str(fd.readlink()).startswith("socket:"):
                out.add(int(fd.name))
        except OSError:
            continue
    return out
