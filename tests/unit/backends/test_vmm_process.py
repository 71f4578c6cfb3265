"""VMM processes: killed by PID, always reaped, and never outliving their parent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cleanroom.backends.process import VmmProcess, console_tail, pdeathsig_prefix


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


def test_vmm_dies_with_its_parent(tmp_path: Path) -> None:
    """SIGKILL the (server) parent: the kernel kills its VMM child via PDEATHSIG."""
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from cleanroom.backends.process import VmmProcess, pdeathsig_prefix
        p = VmmProcess.spawn([*pdeathsig_prefix(), "sleep", "300"],
                             stdout=Path("/dev/null"), stderr=Path("/dev/null"))
        Path({str(pid_file)!r}).write_text(str(p.pid))
        time.sleep(300)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(500):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.02)
        child = int(pid_file.read_text())
        assert _alive(child)
    finally:
        parent.kill()
        parent.wait()
    # The orphan is reparented and reaped by init (or a subreaper) once it dies.
    for _ in range(500):
        if not _alive(child) or _zombie(child):
            break
        time.sleep(0.02)
    assert not _alive(child) or _zombie(child)


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
