"""VMM processes: killed by PID, always reaped, and never outliving their parent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cleanroom.backends.process import ORPHANED_EXIT, VmmProcess, console_tail, pdeathsig_prefix


def _open_fds() -> set[str]:
    return {p.name for p in Path("/proc/self/fd").iterdir()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_kill_reaps_and_is_idempotent(tmp_path: Path) -> None:
    proc = VmmProcess.spawn(
        [*pdeathsig_prefix(), "sleep", "60"], stdout=tmp_path / "o", stderr=tmp_path / "e"
    )
    assert proc.exited() is None
    assert proc.start_ms >= 0
    status = await proc.kill()
    assert status == -9
    assert not _alive(proc.pid)
    assert await proc.kill() == -9


async def test_exit_status_is_reported(tmp_path: Path) -> None:
    proc = VmmProcess.spawn(
        ["sh", "-c", "echo out; echo err >&2; exit 3"], stdout=tmp_path / "o", stderr=tmp_path / "e"
    )
    assert await proc.wait_exit(30) == 3
    assert (tmp_path / "o").read_text() == "out\n"
    assert (tmp_path / "e").read_text() == "err\n"


async def test_concurrent_waiters_all_see_the_exit(tmp_path: Path) -> None:
    """Exit is an event (pidfd), shared by every waiter; a short wait times out cleanly."""
    fds = _open_fds()
    proc = VmmProcess.spawn(["sleep", "0.3"], stdout=tmp_path / "o", stderr=tmp_path / "e")
    assert await proc.wait_exit(0.01) is None
    statuses = await asyncio.gather(*(proc.wait_exit(30) for _ in range(3)), proc.kill())
    assert statuses[:3] == [statuses[3]] * 3
    assert statuses[3] in (0, -9)
    assert not _alive(proc.pid)
    assert _open_fds() == fds  # the pidfd went with the reap
    assert await proc.wait_exit(1) == statuses[3]


# Stands in for a slow fork: execs the rest of its argv only once its parent is gone,
# which forces the spawn's race window (parent dead before the death signal is set).
_AFTER_PARENT_DIES = """
import os, sys, time
parent = int(sys.argv[1])
deadline = time.monotonic() + 60
while os.getppid() == parent and time.monotonic() < deadline:
    time.sleep(0.005)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _spawning_parent(tmp_path: Path, late: bool) -> tuple[subprocess.Popen[bytes], Path]:
    """A process that spawns ``sleep 300`` as a VMM (``late``: the spawned process
    reaches the death-signal wrapper only after the parent died), writes its PID
    to the returned file and then blocks until killed."""
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import os, sys, threading
        from pathlib import Path
        from cleanroom.backends.process import VmmProcess, pdeathsig_prefix
        late = {late!r}
        pre = [sys.executable, "-c", {_AFTER_PARENT_DIES!r}, str(os.getpid())] if late else []
        p = VmmProcess.spawn([*pre, *pdeathsig_prefix(), "sleep", "300"],
                             stdout=Path("/dev/null"), stderr=Path("/dev/null"))
        tmp = Path({str(pid_file)!r} + ".tmp")
        tmp.write_text(str(p.pid))
        tmp.rename({str(pid_file)!r})
        threading.Event().wait()
        """
    )
    return subprocess.Popen([sys.executable, "-c", script]), pid_file


def _wait_for_pid(pid_file: Path, parent: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        assert parent.poll() is None, "the spawning process failed"
        assert time.monotonic() < deadline, "no child was spawned"
        time.sleep(0.01)
    return int(pid_file.read_text())


def _assert_gone(child: int) -> None:
    """The orphan is reparented and reaped by init (or a subreaper) once it dies."""
    deadline = time.monotonic() + 10
    try:
        while _alive(child) and not _zombie(child):
            assert time.monotonic() < deadline, "the VMM outlived its parent"
            time.sleep(0.01)
    finally:
        if _alive(child) and not _zombie(child):
            os.kill(child, 9)


def test_vmm_dies_with_its_parent(tmp_path: Path) -> None:
    """SIGKILL the (server) parent: the kernel kills its VMM child via PDEATHSIG."""
    parent, pid_file = _spawning_parent(tmp_path, late=False)
    try:
        child = _wait_for_pid(pid_file, parent)
        assert _alive(child)
    finally:
        parent.kill()
        parent.wait()
    _assert_gone(child)


def test_parent_killed_right_after_spawn_leaves_no_vmm(tmp_path: Path) -> None:
    """The parent dies after the fork but before the death signal is set (forced here):
    the wrapper sees it has a new parent and never starts the VMM."""
    parent, pid_file = _spawning_parent(tmp_path, late=True)
    try:
        child = _wait_for_pid(pid_file, parent)
    finally:
        parent.kill()  # right after spawn: the child is still waiting to reach setpriv
        parent.wait()
    _assert_gone(child)


def test_orphan_check_refuses_a_foreign_parent(tmp_path: Path) -> None:
    """The wrapper compares its parent with the PID it was built for."""
    proc = VmmProcess.spawn(
        [*pdeathsig_prefix(parent=1), "touch", str(tmp_path / "ran")],
        stdout=tmp_path / "o",
        stderr=tmp_path / "e",
    )
    assert asyncio.run(proc.wait_exit(30)) == ORPHANED_EXIT
    assert not (tmp_path / "ran").exists()
    ok = VmmProcess.spawn(
        [*pdeathsig_prefix(), "touch", str(tmp_path / "ran")],
        stdout=tmp_path / "o",
        stderr=tmp_path / "e",
    )
    assert asyncio.run(ok.wait_exit(30)) == 0
    assert (tmp_path / "ran").exists()


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_console_tail(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    assert console_tail(log) == []
    log.write_bytes(b"".join(f"line {i}\r\n".encode() for i in range(100)) + b"\n\xff\n")
    tail = console_tail(log, 3)
    assert tail == ["line 98", "line 99", "\ufffd"]
    assert console_tail(log, 0) == []


async def test_a_reap_by_one_waiter_resolves_the_others(tmp_path: Path) -> None:
    """The exit is reaped by a poll before the pidfd callback ran: the waiters
    already parked on the exit event see the status, not a cancellation."""
    proc = VmmProcess.spawn(["sleep", "60"], stdout=tmp_path / "o", stderr=tmp_path / "e")
    waiters = [asyncio.ensure_future(proc.wait_exit(30)) for _ in range(3)]
    await asyncio.sleep(0)  # every waiter is parked on the exit event
    os.kill(proc.pid, 9)
    deadline = time.monotonic() + 10
    while not _zombie(proc.pid):  # dead, not reaped; the loop has not run meanwhile
        assert time.monotonic() < deadline
        time.sleep(0.001)  # noqa: ASYNC251 -- blocking on purpose: the loop must not run
    assert await proc.wait_exit(1) == -9  # this one reaps it
    assert await asyncio.gather(*waiters) == [-9, -9, -9]
