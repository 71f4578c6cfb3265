"""Start, watch and kill one VMM process.

Lifetime guarantee: a VMM never outlives the server. Every VMM is started
through ``setpriv --pdeathsig KILL`` (util-linux), which sets
``PR_SET_PDEATHSIG`` and then execs the VMM in the same process, so the kernel
kills the VMM when the thread that started it dies, even if the server is
SIGKILLed. The signal is set only after the fork, so a server that dies
between the fork and the ``prctl`` would leave an orphan that no death signal
reaches: after setting it, a POSIX shell (exec'd in place, same PID) checks
that its parent is still the server and exits otherwise, then execs the VMM.
This avoids ``preexec_fn``, which is unsafe in a threaded process.
Because the death signal follows the *thread* that forked, VMMs must be
started from the event-loop thread (which lives as long as the server).
Each VMM also gets its own session (``setsid``) so a terminal's Ctrl-C
reaches the server, which then destroys its guests in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.netspec import NetworkAttachment

__all__ = ["ORPHANED_EXIT", "VmmProcess", "console_tail", "netns_prefix", "pdeathsig_prefix"]

_SETPRIV = "setpriv"
_SH = "/bin/sh"
ORPHANED_EXIT = 125
"""The wrapper's exit status when the server died before the death signal was set."""
_PARENT_CHECK = '[ "$PPID" = "$1" ] || exit {code}; shift; exec "$@"'


def pdeathsig_prefix(parent: int | None = None) -> list[str]:
    """The argv prefix that makes the following command die with its parent.

    ``parent`` is the PID that will spawn the command (default: this process).
    The command never starts if that process is gone by the time the death
    signal is set (the wrapper exits with :data:`ORPHANED_EXIT`); once it is
    set, the kernel kills the command when that process dies.
    """
    path = shutil.which(_SETPRIV)
    if path is None:
        raise RuntimeLaunchFailed(
            "setpriv (util-linux) is required to tie VMM lifetime to the server",
            details={"missing": _SETPRIV},
        )
    expected = os.getpid() if parent is None else parent
    check = _PARENT_CHECK.format(code=ORPHANED_EXIT)
    return [path, "--pdeathsig", "KILL", "--", _SH, "-c", check, "sh", str(expected)]


def netns_prefix(network: NetworkAttachment | None) -> list[str]:
    """``ip netns exec NS`` (which execs in place, keeping the PID) or nothing."""
    return [] if network is None else ["ip", "netns", "exec", network.netns]


def console_tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a (possibly huge, possibly missing) log file."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    out = [line for line in text.split("\n") if line.strip()]
    return out[-lines:] if lines > 0 else []


class VmmProcess:
    """A VMM child process: spawned with a death signal, killed by PID, always reaped."""

    def __init__(self, popen: subprocess.Popen[bytes], start_ms: float) -> None:
        self._popen = popen
        self.start_ms = start_ms
        """Milliseconds ``spawn`` took (fork + exec of the wrapper)."""
        # A pidfd turns "has it exited?" into an event instead of a poll, so a
        # kill is reaped as soon as the kernel has torn the VMM down.
        self._pidfd: int | None = None
        self._exit: asyncio.Future[None] | None = None
        self._exit_loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(popen.pid)

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        stdout: Path | int,
        stderr: Path,
        pass_fds: Sequence[int] = (),
        cwd: Path | None = None,
        stdin: int | None = None,
    ) -> VmmProcess:
        """Start ``argv`` (already including any wrapper prefix) with stdin closed and
        stdout/stderr appended to files (``stdout`` may be a descriptor instead, e.g.
        a bounded console reader's socket). ``stdin``: a descriptor for a wrapper to
        read instead of ``/dev/null``. Raises ``RuntimeLaunchFailed`` if exec fails."""
        started = time.perf_counter()
        try:
            with contextlib.ExitStack() as files:
                out = stdout if isinstance(stdout, int) else files.enter_context(stdout.open("ab"))
                err = files.enter_context(stderr.open("ab"))
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL if stdin is None else stdin,
                    stdout=out,
                    stderr=err,
                    pass_fds=tuple(pass_fds),
                    cwd=cwd,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise RuntimeLaunchFailed(
                f"could not start {argv[0]}: {exc.strerror or exc}",
                details={"argv0": argv[0]},
            ) from exc
        return cls(popen, round((time.perf_counter() - started) * 1000, 3))

    @property
    def pid(self) -> int:
        """The VMM's PID (the wrappers exec in place, so this is the VMM itself)."""
        return self._popen.pid

    def exited(self) -> int | None:
        """The exit status (negative: killed by that signal) or None while running."""
        return self._popen.poll()

    async def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit; its status or None."""
        status = self._popen.poll()
        if status is not None or timeout <= 0:
            return self._reaped(status)
        if self._pidfd is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit_future()), timeout)
            return self._reaped(self._popen.poll())
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        delay = 0.002
        while True:
            status = self._popen.poll()
            if status is not None or loop.time() >= end:
                return self._reaped(status)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _exit_future(self) -> asyncio.Future[None]:
        """Resolved when the pidfd becomes readable (the process exited); one per process."""
        assert self._pidfd is not None
        if self._exit is None:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            fd = self._pidfd

            def exited() -> None:
                loop.remove_reader(fd)
                if not fut.done():
                    fut.set_result(None)

            loop.add_reader(fd, exited)
            self._exit = fut
            self._exit_loop = loop
        return self._exit

    def _reaped(self, status: int | None) -> int | None:
        """Release the pidfd once ``status`` says the process is reaped."""
        if status is not None and self._pidfd is not None:
            if self._exit is not None and self._exit_loop is not None and not self._exit.done():
                with contextlib.suppress(RuntimeError):  # that loop is already closed
                    self._exit_loop.remove_reader(self._pidfd)
                # Resolve, never cancel: other waiters still await this future
                # (through shield), and a cancel would reach them as CancelledError.
                self._exit.set_result(None)
            os.close(self._pidfd)
            self._pidfd = None
        return status

    def send_kill(self) -> None:
        """SIGKILL the process by PID unless it is reaped; returns at once."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, signal.SIGKILL)

    async def kill(self) -> int:
        """SIGKILL the process by PID (the guest is disposable) and reap it; idempotent."""
        self.send_kill()
        status = await self.wait_exit(10.0)
        if status is None:  # uninterruptible sleep in the kernel; reap without the loop
            status = await asyncio.to_thread(self._popen.wait)
        self._reaped(status)
        return status
