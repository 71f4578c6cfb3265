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

The exit code, timeout and the EXIT frame follow
:class:`cleanroom.agent.command.RunningCommand`; when the leader exits, every
process left in its session is killed (a job-control shell puts its jobs in
groups of their own). The command's output ends
when every holder of the slave has closed it (the master reads EIO); a
process that escaped the session and keeps it open is cut off after
:data:`DRAIN_SECONDS`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import queue
import selectors
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable

from cleanroom.agent.command import DRAIN_SECONDS, TERM_GRACE
from cleanroom.agent.errors import AgentDisconnected
from cleanroom.agent.messages import DEFAULT_ENV, ExecRequest, ExitStatus
from cleanroom.agent.protocol import MAX_DATA_CHUNK, FrameType, encode_frame

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from cleanroom.agent.imageroot import CommandRoot

__all__ = ["DEFAULT_TERM", "TtyCommand", "set_window_size"]

DEFAULT_TERM = "xterm"
"""``TERM`` a terminal command gets when the exec's env names none (as docker does)."""

_STDIN_QUEUE = 16

Send = Callable[[bytes], None]


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """``TIOCSWINSZ`` on a terminal fd (the kernel signals SIGWINCH to its foreground group)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _child_setup(enter: Callable[[], None] | None) -> Callable[[], None]:
    """The child's set-up: the terminal becomes its controlling one, then ``enter``
    (a user image's chroot and account switch) if given."""
    if enter is None:
        return _take_controlling_terminal

    def setup() -> None:
        _take_controlling_terminal()
        enter()

    return setup


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


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


class TtyCommand:
    """One command on a pseudo-terminal, from start to EXIT frame. Create, then :meth:`start`.

    Same control surface as ``RunningCommand`` plus :meth:`resize`.
    """

    def __init__(
        self,
        request: ExecRequest,
        send: Send,
        log: Callable[[str], None],
        *,
        cwd: str,
        root: CommandRoot | None = None,
    ) -> None:
        assert request.tty is not None
        self._req = request
        self._cwd = cwd
        self._root = root
        self._send = send
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._master = -1
        self._lock = threading.Lock()
        self._reaped = False
        self._stdin_q: queue.Queue[bytes | None] | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._threads: list[threading.Thread] = []
        self.done = threading.Event()
        """Set just before the EXIT frame is sent: the next exec may start."""

    def start(self) -> None:
        """Spawn the command on a new pty and its threads; never raises for a bad command."""
        req = self._req
        assert req.tty is not None
        root = self._root
        if root is None:
            env = dict(DEFAULT_ENV)
            if req.env is not None:
                env.update(req.env)
        else:
            env = root.env_for(req.env)
        if req.env is None or "TERM" not in req.env:
            env["TERM"] = DEFAULT_TERM
        started = time.monotonic()
        master, slave = os.openpty()  # both non-inheritable; Popen dups the slave to 0-2
        try:
            set_window_size(master, *req.tty)
            proc = subprocess.Popen(
                list(req.argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=self._cwd if root is None else None,
                env=env,
                start_new_session=True,
                # ioctl, then (in a user image) chroot and setuid: no locks taken.
                preexec_fn=_child_setup(None if root is None else root.preexec(self._cwd)),  # noqa: PLW1509
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(master)
            self._fail_to_start(exc, started)
            return
        finally:
            os.close(slave)  # the child holds it now; EIO on the master means "all closed"
        self._master = master
        self._proc = proc
        self._stdin_q = queue.Queue(_STDIN_QUEUE)
        self._spawn(self._stdin_writer)
        output = self._spawn(self._output)
        self._spawn(lambda: self._wait(started, output))

    def _spawn(self, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _fail_to_start(self, exc: BaseException, started: float) -> None:
        if isinstance(exc, OSError):
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            where = exc.filename if exc.filename is not None else self._req.argv[0]
            why = exc.strerror or str(exc)
        else:  # the terminal could not be attached in the child
            code, where, why = 126, self._req.argv[0], str(exc)
        msg = f"cleanroom-agent: cannot run {where!r}: {why}\r\n"
        self.done.set()
        self._close_wake()
        with contextlib.suppress(AgentDisconnected):
            self._send(encode_frame(FrameType.STDOUT, msg.encode()))
            duration_ms = (time.monotonic() - started) * 1000
            self._send(
                ExitStatus(code, None, None, timed_out=False, duration_ms=duration_ms).to_frame()
            )

    # -- control from the session thread -------------------------------------------------

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the terminal's foreground process group (no-op once reaped)."""
        with self._lock:
            if self._proc is None or self._reaped:
                return
            targets = {self._proc.pid}
            with contextlib.suppress(OSError):  # the terminal may be gone already
                targets = {os.tcgetpgrp(self._master)}
            if signum == signal.SIGKILL:
                targets.add(self._proc.pid)
            for pgrp in targets:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgrp, signum)

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal's window size (no-op once the command is reaped)."""
        with self._lock:
            if self._proc is None or self._reaped:
                return
            with contextlib.suppress(OSError):  # the terminal went away: nothing to resize
                set_window_size(self._master, rows, cols)

    def stdin_data(self, data: bytes) -> None:
        """Queue bytes for the terminal (blocks while the queue is full)."""
        if self._stdin_q is not None and data:
            self._stdin_q.put(data)

    def stdin_eof(self) -> None:
        """The host's input ended: type the terminal's EOF character once."""
        if self._stdin_q is not None:
            with contextlib.suppress(OSError, termios.error):
                veof = termios.tcgetattr(self._master)[6][termios.VEOF]
                self._stdin_q.put(veof if isinstance(veof, bytes) else bytes([veof]))
            self._stdin_q.put(None)
            self._stdin_q = None

    def kill_and_wait(self) -> None:
        """End the command now (session ending): SIGKILL its groups, join the threads."""
        self.signal(signal.SIGKILL)
        if self._stdin_q is not None:
            self._stdin_q.put(None)
        for thread in self._threads:
            thread.join()

    # -- threads ---------------------------------------------------------------------------

    def _stdin_writer(self) -> None:
        q = self._stdin_q
        assert q is not None
        broken = False
        while (chunk := q.get()) is not None:
            if broken:
                continue  # keep consuming so the session never blocks on a dead terminal
            view = memoryview(chunk)
            try:
                while view:
                    view = view[os.write(self._master, view) :]
            except OSError:
                broken = True

    def _output(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._master, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
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
        except AgentDisconnected:
            self.signal(signal.SIGKILL)  # nobody is listening any more
        finally:
            sel.close()

    def _wait(self, started: float, output: threading.Thread) -> None:
        proc = self._proc
        assert proc is not None
        timed_out = False
        try:
            rc = proc.wait(self._req.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.signal(signal.SIGTERM)
            try:
                rc = proc.wait(TERM_GRACE)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                rc = proc.wait()
        duration_ms = (time.monotonic() - started) * 1000
        with self._lock:
            # Whatever is left of the terminal's session dies with its leader.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            _kill_session(proc.pid)
            self._reaped = True
        output.join(DRAIN_SECONDS)
        if output.is_alive():
            self._log("terminal still open after the command exited; closing it")
            os.write(self._wake_w, b"x")
            output.join()
        if self._stdin_q is not None:
            self._stdin_q.put(None)  # end the writer before the master closes
            self._stdin_q = None
        self._threads[0].join()
        os.close(self._master)
        self._close_wake()
        if rc < 0:
            status = ExitStatus(128 - rc, -rc, _signal_name(-rc), timed_out, duration_ms)
        else:
            status = ExitStatus(rc, None, None, timed_out, duration_ms)
        self.done.set()
        with contextlib.suppress(AgentDisconnected):  # the session sees it on its next read
            self._send(status.to_frame())

    def _close_wake(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
