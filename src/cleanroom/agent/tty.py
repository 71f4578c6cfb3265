"""Running one command on a pseudo-terminal for the guest agent (exec ``tty``).

Stdlib only: this module runs inside the guest.

The command gets the slave side of a fresh pty as stdin, stdout and stderr,
in a new session whose controlling terminal that pty is (``setsid`` then
``TIOCSCTTY``, as ``login_tty(3)`` does), so its process group starts as the
terminal's foreground group and job-control shells work. The agent keeps the
master:

* output: everything the terminal shows (stdout and stderr merged, as on any
  terminal) is read from the master and sent as STDOUT frames, at most
  :data:`MAX_DATA_CHUNK` per read. Blocking on a slow host fills the pty and
  stops the command: memory stays bounded.
* input: STDIN frames are queued (bounded) and written to the master by a
  writer thread; STDIN_EOF types the terminal's EOF character (``VEOF``, as
  a user pressing Ctrl-D).
* RESIZE sets ``TIOCSWINSZ`` on the master; the kernel then sends SIGWINCH to
  the foreground process group.
* SIGNAL goes to the terminal's foreground process group (``tcgetpgrp``: what
  Ctrl-C would reach); SIGKILL (the host abandoning the command) also goes to
  the session's first group.

The exit code, timeout and the EXIT frame are
:class:`~cleanroom.agent.process.CommandProcess`'s; when the leader exits, every
process left in its session is killed (a job-control shell puts its jobs in
groups of their own). The command's output ends
when every holder of the slave has closed it (the master reads EIO); a
process that escaped the session and keeps it open is cut off after
:data:`~cleanroom.agent.process.DRAIN_SECONDS`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import signal
import struct
import subprocess
import termios
from collections.abc import Callable

from cleanroom.agent.process import CommandProcess, child_setup
from cleanroom.agent.protocol import MAX_DATA_CHUNK, FrameType, encode_frame

__all__ = ["DEFAULT_TERM", "TtyCommand", "set_window_size"]

DEFAULT_TERM = "xterm"
"""``TERM`` a terminal command gets when the exec's env names none (as docker does)."""


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """``TIOCSWINSZ`` on a terminal fd (the kernel signals SIGWINCH to its foreground group)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_controlling_terminal() -> None:
    """In the child, after ``setsid`` and the dup of the slave to fds 0-2."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (job-control shells spread it over groups)."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]  # noqa: PTH208
    except OSError:
        return
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:  # noqa: PTH123
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if len(fields) > 3 and int(fields[3]) == sid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


class TtyCommand(CommandProcess):
    """One command on a pseudo-terminal, from start to EXIT frame. Create, then :meth:`start`.

    Same control surface as ``RunningCommand`` plus :meth:`resize`.
    """

    _FAIL_STREAM = FrameType.STDOUT  # a terminal has one output
    _NEWLINE = "\r\n"
    _OUTPUT_NAME = "terminal"
    _master = -1

    def _env(self) -> dict[str, str]:
        env = super()._env()
        if self._req.env is None or "TERM" not in self._req.env:
            env["TERM"] = DEFAULT_TERM
        return env

    def _popen(
        self, env: dict[str, str], preexec: Callable[[], None] | None
    ) -> subprocess.Popen[bytes]:
        req = self._req
        assert req.tty is not None
        master, slave = os.openpty()  # both non-inheritable; Popen dups the slave to 0-2
        try:
            set_window_size(master, *req.tty)
            proc = subprocess.Popen(
                list(req.argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=self._cwd if preexec is None else None,
                env=env,
                start_new_session=True,
                # Signals, ioctl, then (in a user image) chroot and setuid: no locks taken.
                preexec_fn=child_setup(_take_controlling_terminal, preexec),  # noqa: PLW1509
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # the child holds it now; EIO on the master means "all closed"
        self._master = self._stdin_fd = master
        return proc

    # -- control from the session thread -------------------------------------------------

    def _signal_groups(self, signum: int) -> set[int]:
        """The terminal's foreground process group (what Ctrl-C would reach); SIGKILL
        also goes to the session's first group."""
        assert self._proc is not None
        targets = {self._proc.pid}
        with contextlib.suppress(OSError):  # the terminal may be gone already
            foreground = os.tcgetpgrp(self._master)
            # 0 once the session leader is gone (no foreground group): killpg(0)
            # would signal the agent's own group.
            if foreground > 0:
                targets = {foreground}
        if signum == signal.SIGKILL:
            targets.add(self._proc.pid)
        return targets

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal's window size (no-op once the command is reaped)."""
        with self._lock:
            if self._proc is None or self._reaped:
                return
            with contextlib.suppress(OSError):  # the terminal went away: nothing to resize
                set_window_size(self._master, rows, cols)

    def stdin_eof(self) -> None:
        """The host's input ended: type the terminal's EOF character once."""
        if self._stdin_q is not None:
            with contextlib.suppress(OSError, termios.error):
                veof = termios.tcgetattr(self._master)[6][termios.VEOF]
                self._stdin_q.put(veof if isinstance(veof, bytes) else bytes([veof]))
        super().stdin_eof()

    # -- threads ---------------------------------------------------------------------------

    def _relay(self, sel: selectors.BaseSelector) -> None:
        sel.register(self._master, selectors.EVENT_READ)
        while True:
            keys = [key.fd for key, _ in sel.select()]
            if self._wake_r in keys:
                return  # drain deadline passed
            try:
                data = os.read(self._master, MAX_DATA_CHUNK)
            except OSError as exc:
                if exc.errno == errno.EIO:  # every slave fd is closed
                    return
                raise
            if not data:
                return
            self._send(encode_frame(FrameType.STDOUT, data))

    def _kill_leftovers(self, pid: int) -> None:
        # Whatever is left of the terminal's session dies with its leader.
        super()._kill_leftovers(pid)
        _kill_session(pid)

    def _after_output(self) -> None:
        if self._stdin_q is not None:
            self._stdin_q.put(None)  # end the writer before the master closes
            self._stdin_q = None
        self._threads[0].join()
        os.close(self._master)
