"""Running QEMU unprivileged: uids, descriptor handover, the drop wrapper, the argv.

The wrapper is run for real (setpriv as root), with ``sh`` standing in for QEMU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import dead

from cleanroom.backends.qemu.argv import QemuLaunch, QemuMachine, build_argv
from cleanroom.backends.qemu.privilege import (
    VMM_UID_BASE,
    FdHandover,
    VmmUser,
    drop_prefix,
    unprivileged_blocker,
    write_mask_fstab,
)
from cleanroom.netspec import NetworkAttachment

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def test_each_vmm_gets_a_uid_of_its_own_until_released(tmp_path: Path) -> None:
    a, b = VmmUser.take(tmp_path), VmmUser.take(tmp_path)
    try:
        assert a.uid != b.uid
        assert min(a.uid, b.uid) >= VMM_UID_BASE
        a.release()
        a.release()  # idempotent
        c = VmmUser.take(tmp_path)
        assert c.uid == a.uid  # the lowest free one again
        c.release()
    finally:
        a.release()
        b.release()


def test_a_uid_held_by_another_process_is_skipped(tmp_path: Path) -> None:
    lock = tmp_path / str(VMM_UID_BASE)
    lock.touch()
    holder = subprocess.Popen(["flock", "--no-fork", str(lock), "sleep", "30"])
    try:
        for _ in range(100):  # until the other process holds the lock
            if subprocess.run(["flock", "-n", str(lock), "true"], check=False).returncode:
                break
            time.sleep(0.02)
        user = VmmUser.take(tmp_path)
        try:
            assert user.uid == VMM_UID_BASE + 1
        finally:
            user.release()
    finally:
        holder.kill()
        holder.wait()
    user = VmmUser.take(tmp_path)
    assert user.uid == VMM_UID_BASE
    user.release()


def test_handover_opens_fd_sets_and_closes_its_copies(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(b"x")
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"k")
    handover = FdHandover()
    assert handover.disk(disk, writable=True, what="ws") == Path("/dev/fdset/1")
    assert handover.disk(disk, writable=False, what="base") == Path("/dev/fdset/2")
    proc_path = handover.file(kernel, "kernel")
    assert proc_path.read_bytes() == b"k"
    fds = list(handover.fds)
    assert len(fds) == 4
    assert handover.add_fd == [
        "-add-fd",
        f"fd={fds[0]},set=1",
        "-add-fd",
        f"fd={fds[1]},set=1",
        "-add-fd",
        f"fd={fds[2]},set=2",
    ]
    assert os.get_blocking(fds[0])  # open
    handover.close()
    for fd in fds:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


def test_handover_never_follows_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    handover = FdHandover()
    with pytest.raises(Exception, match="cannot open"):
        handover.disk(tmp_path / "link", writable=True, what="ws")
    handover.close()


def test_argv_with_descriptors_and_the_drop_wrapper() -> None:
    machine = QemuMachine(
        binary="qemu-system-x86_64",
        kernel=Path("/proc/self/fd/9"),
        initrd=None,
        rootfs=Path("/img/rootfs"),
        accel="tcg",
    )
    launch = QemuLaunch(
        machine=machine,
        rootfs=Path("/dev/fdset/1"),
        rootfs_format="qcow2",
        console_log=Path("/run/console.log"),
        agent_fd=3,
        qmp_fd=4,
        network=NetworkAttachment(netns="cr-x", tap="tap0", mac="06:00:00:00:00:02"),
        rootfs_backing=Path("/dev/fdset/2"),
        tap_fd=12,
        add_fd=("-add-fd", "fd=10,set=1"),
        vmm_wrapper=("WRAP",),
    )
    argv = build_argv(launch, prefix=["OUTER"])
    assert argv[: argv.index("qemu-system-x86_64") + 1] == [
        "OUTER",
        "ip",
        "netns",
        "exec",
        "cr-x",
        "WRAP",
        "qemu-system-x86_64",
    ]
    assert argv[argv.index("-kernel") + 1] == "/proc/self/fd/9"
    assert argv.index("-add-fd") < argv.index("-drive")
    root = argv[argv.index("-drive") + 1]
    assert root.startswith("id=root,file=/dev/fdset/1,format=qcow2,")
    assert root.endswith(",backing.driver=raw,backing.file.filename=/dev/fdset/2")
    assert "tap,id=net0,fd=12" in argv
    assert not any("ifname=" in arg for arg in argv)


@needs_root
def test_the_wrapper_drops_everything_and_keeps_the_death_signal(tmp_path: Path) -> None:
    user = VmmUser.take()
    try:
        probe = "id -u; id -G; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status"
        out = subprocess.run(
            [*drop_prefix(user), "/bin/sh", "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split("\n")
        assert out[0] == str(user.uid)
        assert out[1] == str(user.uid)  # its own gid only
        assert "CapEff:\t0000000000000000" in out
        assert "CapBnd:\t0000000000000000" in out
        assert "NoNewPrivs:\t1" in out
        # The uid change clears a death signal set before it: the wrapper sets it
        # again. A parent that exits takes the "VMM" with it.
        pidfile = tmp_path / "pid"
        parent = (
            "import os, subprocess, sys, time\n"
            "argv = [a.replace('@PARENT', str(os.getpid())) for a in sys.argv[2:]]\n"
            "p = subprocess.Popen(argv)\n"
            "deadline = time.monotonic() + 30\n"
            "while p.poll() is None and time.monotonic() < deadline:\n"
            "    with open(f'/proc/{p.pid}/comm') as comm:\n"
            "        if comm.read().strip() == 'sleep':\n"  # past the checks: exec'd
            "            break\n"
            "    time.sleep(0.01)\n"
            "alive = p.poll() is None\n"
            "open(sys.argv[1], 'w').write(f'{p.pid} {alive}')\n"
        )
        wrapper = [*drop_prefix(user)[:-1], "@PARENT"]  # the spawner is that parent
        subprocess.run(
            [sys.executable, "-c", parent, str(pidfile), *wrapper, "sleep", "60"],
            check=True,
            timeout=30,
        )
        child, alive = pidfile.read_text().split()
        assert alive == "True"  # the parent check passed: it ran while its parent lived
        for _ in range(100):
            if dead(child):
                break
            time.sleep(0.05)
        assert dead(child)
    finally:
        user.release()


@needs_root
def test_the_wrapper_hides_host_directories_in_a_mount_namespace_of_its_own(
    tmp_path: Path,
) -> None:
    fstab = write_mask_fstab(tmp_path / "mounts.fstab")
    assert "cleanroom-empty /home tmpfs ro," in fstab.read_text()
    user = VmmUser.take(tmp_path)
    try:
        probe = (
            "readlink /proc/self/ns/mnt; ls -A /home /root /tmp /run | wc -l; "
            "touch /tmp/x 2>/dev/null && echo writable || echo read-only"
        )
        out = subprocess.run(
            [*drop_prefix(user, mask=fstab), "/bin/sh", "-c", probe],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    finally:
        user.release()
    assert out[0] != str(Path("/proc/self/ns/mnt").readlink())
    # Only the four "dir:" headers and blank separators: the directories are empty.
    assert out[1] == "7"
    assert out[2] == "read-only"
    assert "cleanroom-empty" not in Path("/proc/self/mountinfo").read_text()  # host untouched


def test_blockers(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"k")
    kernel.chmod(0o600)
    reason = unprivileged_blocker([kernel])
    if os.geteuid() == 0:
        assert reason == f"{kernel} is not world-readable"
        kernel.chmod(0o644)
        assert unprivileged_blocker([kernel]) is None
    else:
        assert reason is not None
        assert "the server runs as uid" in reason
