"""The life of one command the guest agent runs, on pipes or on a terminal.

Stdlib only: this module runs inside the guest.

:class:`CommandProcess` holds what every exec shares, from start to EXIT
frame; a subclass says how the command is started, where its stdin goes,
how its output is read and which process groups a signal reaches
(:class:`~cleanroom.agent.command.RunningCommand` on pipes,
:class:`~cleanroom.agent.tty.TtyCommand` on a pseudo-terminal). Threads:

* stdin: a bounded queue feeds a writer thread; the session's reader blocks on
  a full queue, which in turn stops reading the channel (flow control).
* output: one thread waits on the command's output and on a wake-up pipe, and
  sends each read (at most ``MAX_DATA_CHUNK``) as a frame right away.
  Sending blocks while the host does not read, and the command then blocks on
  a full pipe or terminal: memory stays bounded on both sides.
* waiter: waits for the leader; on timeout sends SIGTERM, then SIGKILL after
  :data:`TERM_GRACE` seconds. When the leader is gone, whatever is left of its
  processes is killed (background jobs would otherwise hold the output open
  forever), remaining output is drained for at most :data:`DRAIN_SECONDS`,
  and the EXIT frame is sent last.

A command that cannot be started (missing program or cwd, no permission)
gets a message on its output and exit code 127 (not found) or 126, like a
shell; that is a result, not a protocol error.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import queue
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from cleanroom.agent.errors import AgentDisconnected
from cleanroom.agent.messages import DEFAULT_ENV, ExecRequest, ExitStatus
from cleanroom.agent.protocol import FrameType, encode_frame

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from cleanroom.agent.imageroot import CommandRoot

__all__ = ["DRAIN_SECONDS", "TERM_GRACE", "CommandProcess", "Send", "child_setup"]

TERM_GRACE = 2.0
DRAIN_SECONDS = 5.0
_STDIN_QUEUE = 16
_CATCHABLE = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
_RESTORED_BY_SUBPROCESS = frozenset({signal.SIGPIPE, signal.SIGXFSZ})

Send = Callable[[bytes], None]


@functools.cache
def _inherited_signal_state() -> tuple[tuple[int, ...], bool]:
    """The catchable signals this process ignores that a command must not inherit,
    and whether any signal is blocked: what it was started with (the agent sets
    neither; ``subprocess`` itself restores SIGPIPE and SIGXFSZ in the child)."""
    ignored = tuple(
        s
        for s in _CATCHABLE
        if s not in _RESTORED_BY_SUBPROCESS and signal.getsignal(s) == signal.SIG_IGN
    )
    return ignored, bool(signal.pthread_sigmask(signal.SIG_BLOCK, ()))


def child_setup(*steps: Callable[[], None] | None) -> Callable[[], None] | None:
    """A ``preexec_fn``: every catchable signal at ``SIG_DFL`` and none blocked, then
    each of ``steps`` given (a terminal's take-over, a user image's chroot and
    account switch); None when there is nothing to do.

    exec keeps ignored signals ignored and the signal mask as it is: an agent
    started with SIGINT ignored (a background job of a non-interactive shell)
    would hand that on, and Ctrl-C or a SIGINT to the command's group would do
    nothing. Only what this process was started with is reset, and with
    nothing to reset and no step there is no ``preexec_fn`` at all, so
    ``subprocess`` keeps its vfork path (a fork of the agent costs milliseconds
    under emulation).
    """
    todo = [step for step in steps if step is not None]
    ignored, blocked = _inherited_signal_state()
    if not (todo or ignored or blocked):
        return None

    def setup() -> None:
        for signum in ignored:
            with contextlib.suppress(OSError, ValueError):  # the C library's own signals
                signal.signal(signum, signal.SIG_DFL)
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for step in todo:
            step()

    return setup


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def _exit_status(rc: int, *, timed_out: bool, duration_ms: float) -> ExitStatus:
    """``Popen.returncode`` as the EXIT frame reports it (a signal ``n`` is ``128 + n``)."""
    if rc < 0:
        return ExitStatus(128 - rc, -rc, _signal_name(-rc), timed_out, duration_ms)
    return ExitStatus(rc, None, None, timed_out, duration_ms)


class CommandProcess:
    """One command from start to EXIT frame. Create, then :meth:`start`.

    Subclasses implement :meth:`_popen` (which sets :attr:`_stdin_fd` when the
    command takes stdin) and :meth:`_relay`. By default the command has a
    process group of its own (its pid) that signals reach.
    """

    _FAIL_STREAM = FrameType.STDERR
    """Where the message of a command that cannot start goes."""
    _NEWLINE = "\n"
    _OUTPUT_NAME = "output"
    """What the drain message calls the command's output."""

    def __init__(
        self,
        request: ExecRequest,
        send: Send,
        log: Callable[[str], None],
        *,
        cwd: str,
        root: CommandRoot | None = None,
    ) -> None:
        self._req = request
        self._cwd = cwd
        self._root = root
        self._send = send
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        """Held while signalling, and while the leader's leftovers are killed."""
        self._reaped = False
        self._stdin_q: queue.Queue[bytes | None] | None = None
        self._stdin_fd = -1
        self._wake_r, self._wake_w = os.pipe()
        self._wake_closed = False
        self._threads: list[threading.Thread] = []
        self.done = threading.Event()
        """Set just before the EXIT frame is sent: the next exec may start."""

    # -- what a subclass provides ------------------------------------------------------------

    def _popen(
        self, env: dict[str, str], preexec: Callable[[], None] | None
    ) -> subprocess.Popen[bytes]:
        """Start the command with ``env`` and (in a user image) ``preexec`` run in the child.

        Raises ``OSError`` or ``subprocess.SubprocessError`` when it cannot start,
        having released whatever it opened."""
        raise NotImplementedError

    def _relay(self, sel: selectors.BaseSelector) -> None:
        """Send the command's output until it ends; return when ``sel`` (which watches
        the wake-up pipe) shows the wake-up fd ready."""
        raise NotImplementedError

    def _signal_groups(self, signum: int) -> set[int]:
        """The process groups ``signum`` goes to (called with the lock held)."""
        assert self._proc is not None
        return {self._proc.pid}

    def _kill_leftovers(self, pid: int) -> None:
        """SIGKILL what is left of the command once its leader ``pid`` is reaped."""
        # The leader is reaped, but its group id stays valid while members live.
        with contextlib.suppress(ProcessLookupError, PermissionError):  # no member left
            os.killpg(pid, signal.SIGKILL)

    def _after_output(self) -> None:
        """Release what the command's I/O held once its output has ended."""

    # -- start -------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        req, root = self._req, self._root
        if root is None:
            env = dict(DEFAULT_ENV)
            if req.env is not None:
                env.update(req.env)
            return env
        return root.env_for(req.env)

    def start(self) -> None:
        """Spawn the command and its threads; never raises for a bad command."""
        root = self._root
        started = time.monotonic()
        try:
            # In a user image, chroot and chdir happen in the child (cwd is a path
            # in the image); the program is looked up along the image's PATH.
            # preexec_fn is safe here: the session joins the previous command's
            # threads before starting the next, so no other thread holds a lock.
            proc = self._popen(self._env(), None if root is None else root.preexec(self._cwd))
        except (OSError, subprocess.SubprocessError) as exc:
            self._fail_to_start(exc, started)
            return
        self._proc = proc
        if self._stdin_fd >= 0:
            stdin_q: queue.Queue[bytes | None] = queue.Queue(_STDIN_QUEUE)
            self._stdin_q = stdin_q
            self._spawn(lambda: self._stdin_writer(stdin_q))
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
        else:  # the child's set-up failed (a terminal could not be attached)
            code, where, why = 126, self._req.argv[0], str(exc)
        msg = f"cleanroom-agent: cannot run {where!r}: {why}{self._NEWLINE}"
        self.done.set()
        self._close_wake()
        with contextlib.suppress(AgentDisconnected):  # the session sees it on its next read
            self._send(encode_frame(self._FAIL_STREAM, msg.encode()))
            duration_ms = (time.monotonic() - started) * 1000
            self._send(_exit_status(code, timed_out=False, duration_ms=duration_ms).to_frame())

    # -- control from the session thread -------------------------------------------------

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's process groups (no-op once the leader is reaped)."""
        with self._lock:
            if self._proc is None or self._reaped:
                return
            for pgrp in self._signal_groups(signum):
                with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                    os.killpg(pgrp, signum)

    def stdin_data(self, data: bytes) -> None:
        """Queue stdin bytes (blocks while the queue is full); ignored without streamed stdin."""
        if self._stdin_q is not None and data:
            self._stdin_q.put(data)

    def stdin_eof(self) -> None:
        """The host's input ended: the writer finishes what is queued, then stops."""
        if self._stdin_q is not None:
            self._stdin_q.put(None)
            self._stdin_q = None

    def kill_and_wait(self) -> None:
        """End the command now (session ending): SIGKILL it, join the threads."""
        self.signal(signal.SIGKILL)
        if self._stdin_q is not None:
            self._stdin_q.put(None)
        for thread in self._threads:
            thread.join()

    # -- threads ---------------------------------------------------------------------------

    def _stdin_writer(self, q: queue.Queue[bytes | None]) -> None:
        fd = self._stdin_fd
        broken = False
        while (chunk := q.get()) is not None:
            if broken:
                continue  # keep consuming so the session never blocks on a dead command
            view = memoryview(chunk)
            try:
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                broken = True

    def _output(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            self._relay(sel)
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
            self._kill_leftovers(proc.pid)
            self._reaped = True
        output.join(DRAIN_SECONDS)
        if output.is_alive():
            # A process that escaped (a setsid daemon) still holds the output open.
            self._log(f"{self._OUTPUT_NAME} still open after the command exited; closing it")
            os.write(self._wake_w, b"x")
            output.join()
        self._after_output()
        self._close_wake()
        status = _exit_status(rc, timed_out=timed_out, duration_ms=duration_ms)
        self.done.set()
        with contextlib.suppress(AgentDisconnected):  # the session sees it on its next read
            self._send(status.to_frame())

    def _close_wake(self) -> None:
        if self._wake_closed:
            return
        self._wake_closed = True
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
