"""QEMU as pid 1 of a pid namespace of its own: the namespace switch, the watched
wrapper (uid lock instead of PPID), ``/proc`` remounted, signals and the doctor.

The wrapper is run for real (unshare, setpriv, flock as root), with ``sh``
standing in for QEMU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from procs import dead

from cleanroom.backends.images import BootImage
from cleanroom.backends.process import ORPHANED_EXIT
from cleanroom.backends.qemu import QemuBackend, QemuConfig
from cleanroom.backends.qemu.accel import VerdictCache
from cleanroom.backends.qemu.pidns import new_pid_namespace, pid_namespace_blocker
from cleanroom.backends.qemu.privilege import (
    VMM_UID_BASE,
    VmmUser,
    drop_prefix,
    write_mask_fstab,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")


def _ns(pid: int | str = "self") -> str:
    return str(Path(f"/proc/{pid}/ns/pid").readlink())


def test_the_watched_wrapper_checks_the_uid_lock_not_the_parent(tmp_path: Path) -> None:
    user = VmmUser.take(tmp_path)
    try:
        fstab = write_mask_fstab(tmp_path / "m.fstab", proc=True)
        argv = drop_prefix(user, mask=fstab, watched=True)
    finally:
        user.release()
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    drop = argv.index("--reuid")
    assert argv[drop + 1] == str(user.uid)
    assert "--no-new-privs" in argv
    # After the drop: the death signal again, then the held check on stdin.
    tail = argv[argv.index("--bounding-set") + 3 :]
    assert Path(tail[0]).name == "setpriv"
    assert tail[1:6] == ["--pdeathsig", "KILL", "--", "/bin/sh", "-c"]
    assert "flock -n -s -E 75 0" in tail[6]
    assert f"exit {ORPHANED_EXIT}" in tail[6]
    assert "</dev/null" in tail[6]  # QEMU does not keep the lock's descriptor
    assert tail[7:] == ["sh"]
    assert not any("PPID" in arg for arg in argv)
    # Unwatched (no pid namespace), the PPID check stays.
    assert any("PPID" in arg for arg in drop_prefix(user))
    lines = fstab.read_text().splitlines()
    assert lines[-1] == "cleanroom-proc /proc proc nosuid,nodev,noexec 0 0"
    assert "proc" not in write_mask_fstab(tmp_path / "plain.fstab").read_text()


def test_watch_needs_a_held_uid(tmp_path: Path) -> None:
    user = VmmUser.take(tmp_path)
    fd = user.watch()
    try:
        assert Path(f"/proc/self/fd/{fd}").readlink() == tmp_path / str(user.uid)
    finally:
        os.close(fd)
        user.release()
    with pytest.raises(Exception, match="no longer held"):
        user.watch()


@needs_root
def test_only_the_one_fork_in_the_block_gets_a_new_namespace() -> None:
    assert pid_namespace_blocker() is None
    other_thread: list[str] = []
    stop = threading.Event()

    def elsewhere() -> None:  # another thread forking meanwhile stays in ours
        while not stop.is_set():
            other_thread.append(
                subprocess.run(
                    ["readlink", "/proc/self/ns/pid"], capture_output=True, text=True, check=True
                ).stdout.strip()
            )

    thread = threading.Thread(target=elsewhere)
    thread.start()
    try:
        with new_pid_namespace():
            inside = subprocess.run(
                ["sh", "-c", "echo $$ $PPID; readlink /proc/self/ns/pid"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        after = subprocess.run(
            ["readlink", "/proc/self/ns/pid"], capture_output=True, text=True, check=True
        )
    finally:
        stop.set()
        thread.join()
    assert inside[:2] == ["1", "0"]  # pid 1, its parent outside the namespace
    assert inside[2] != _ns()
    assert after.stdout.strip() == _ns()  # set back for this thread's later children
    assert other_thread
    assert set(other_thread) == {_ns()}
    assert _ns("thread-self") == _ns()


def _spawn_watched(
    user: VmmUser, tmp_path: Path, script: str, *, watch: int | None = None
) -> subprocess.Popen[str]:
    fstab = write_mask_fstab(tmp_path / "m.fstab", proc=True)
    argv = [*drop_prefix(user, mask=fstab, watched=True), "/bin/sh", "-c", script]
    fd = user.watch() if watch is None else watch
    try:
        with new_pid_namespace():
            return subprocess.Popen(argv, stdin=fd, stdout=subprocess.PIPE, text=True)
    finally:
        os.close(fd)


@needs_root
def test_the_vmm_is_pid_1_alone_with_its_own_proc(tmp_path: Path) -> None:
    user = VmmUser.take(tmp_path / "locks")
    try:
        probe = (
            "echo $$; id -u; ls /proc | grep -cE '^[0-9]+$'; readlink /proc/1/exe; "
            "readlink /proc/self/fd/0; grep -c cleanroom-proc /proc/self/mountinfo"
        )
        # kill(2) delivers a signal sent to oneself before it returns: no wait needed
        # to see that pid 1 survived it.
        proc = _spawn_watched(user, tmp_path, f"{probe}; kill -TERM 1; echo survived")
        out, _ = proc.communicate(timeout=30)
    finally:
        user.release()
    pid1, uid, count, exe, stdin, mounted = out.split("\n")[:6]
    assert pid1 == "1"
    assert uid == str(user.uid)
    assert user.uid >= VMM_UID_BASE
    # Only itself and the probe's own short-lived children: no host process.
    assert int(count) <= 4
    assert exe == os.path.realpath("/bin/sh")  # pid 1 is the "VMM" itself
    assert stdin == "/dev/null"  # the lock's descriptor is not passed on
    assert mounted == "1"
    # pid 1 without a handler ignores a SIGTERM from inside its namespace.
    assert "survived" in out
    assert proc.returncode == 0


@needs_root
def test_signals_from_the_server_reach_pid_1(tmp_path: Path) -> None:
    user = VmmUser.take(tmp_path / "locks")
    try:
        # A handler (as QEMU has for SIGTERM) is honoured; SIGKILL always is.
        handled = _spawn_watched(
            user, tmp_path, "trap 'echo term; exit 7' TERM; echo up; while :; do sleep 0.05; done"
        )
        assert handled.stdout is not None
        assert handled.stdout.readline() == "up\n"
        assert _ns(handled.pid) != _ns()
        handled.send_signal(signal.SIGTERM)
        assert handled.communicate(timeout=30)[0] == "term\n"
        assert handled.returncode == 7
        killed = _spawn_watched(user, tmp_path, "echo up; exec sleep 60")
        assert killed.stdout is not None
        assert killed.stdout.readline() == "up\n"
        killed.kill()
        killed.communicate(timeout=30)
        assert killed.returncode == -signal.SIGKILL
    finally:
        user.release()


@needs_root
def test_a_released_uid_stops_the_wrapper(tmp_path: Path) -> None:
    """The server died (its uid lock is free) before the death signal was set."""
    user = VmmUser.take(tmp_path / "locks")
    fd = user.watch()
    user.release()
    proc = _spawn_watched(user, tmp_path, "echo ran", watch=fd)
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (ORPHANED_EXIT, "")


_SPAWNER = """
import os, subprocess, sys, time
from pathlib import Path
from cleanroom.backends.qemu.pidns import new_pid_namespace
from cleanroom.backends.qemu.privilege import VmmUser, drop_prefix, write_mask_fstab
tmp = Path(sys.argv[1])
user = VmmUser.take(tmp / "locks")
argv = [*drop_prefix(user, mask=write_mask_fstab(tmp / "m.fstab", proc=True), watched=True),
        "sleep", "300"]
fd = user.watch()
with new_pid_namespace():
    p = subprocess.Popen(argv, stdin=fd)
os.close(fd)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:  # until the wrapper has exec'd sleep
    if Path(f"/proc/{p.pid}/comm").read_text().strip() == "sleep":
        break
    time.sleep(0.01)
(tmp / "pid").write_text(str(p.pid))
time.sleep(300)
"""


@needs_root
def test_the_vmm_dies_with_a_killed_server(tmp_path: Path) -> None:
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SPAWNER), str(tmp_path)])
    try:
        for _ in range(600):
            if (tmp_path / "pid").exists() and (tmp_path / "pid").read_text():
                break
            time.sleep(0.05)
        vmm = int((tmp_path / "pid").read_text())
        assert Path(f"/proc/{vmm}/comm").read_text().strip() == "sleep"
        assert _ns(vmm) != _ns()
    finally:
        server.kill()
        server.wait()
    for _ in range(200):
        if dead(vmm):
            break
        time.sleep(0.05)
    assert dead(vmm)


def _image(tmp_path: Path) -> BootImage:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"k")
    kernel.chmod(0o644)
    return BootImage(
        kernel=kernel,
        vmlinux=kernel,
        initrd=None,
        rootfs=tmp_path / "rootfs",
        digest="d" * 64,
        kernel_version="6.1",
        path=tmp_path,
    )


@pytest.mark.parametrize("unprivileged", [True, False])
def test_doctor_reports_the_namespaces(tmp_path: Path, unprivileged: bool) -> None:
    config = QemuConfig(unprivileged=unprivileged)
    backend = QemuBackend(config, verdicts=VerdictCache(tmp_path / "verdicts.json"))
    check = backend._privileges_check(_image(tmp_path))
    assert check.name == "qemu.privileges"
    if unprivileged and os.geteuid() == 0:
        assert check.status == "pass"
        assert "pid 1 of its own pid namespace" in check.reason
        assert check.details == {"uid_base": VMM_UID_BASE, "namespaces": ["mnt", "pid"]}
    else:
        assert check.status == "warn"
        assert "QEMU runs as the server's user" in check.reason
        if not unprivileged:
            assert "backends.qemu.unprivileged is off" in check.reason
