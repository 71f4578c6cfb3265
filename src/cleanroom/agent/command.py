"""Running one command for the guest agent: process group, streamed I/O, timeout.

Stdlib only: this module runs inside the guest.

The command runs in a new session (so its process group id is its pid) with
pipes for stdout/stderr and, when the exec streams stdin, for stdin. Threads:

* output: one thread multiplexes both pipes with ``selectors`` and sends each
  read (at most :data:`MAX_DATA_CHUNK`) as a STDOUT/STDERR frame right away.
  Sending blocks while the host does not read, and the pipe then fills and
  blocks the command: memory stays bounded on both sides.
* stdin: a bounded queue feeds a writer thread; the session's reader blocks on
  a full queue, which in turn stops reading the channel (flow control).
* waiter: waits for the leader; on timeout sends SIGTERM to the group, then
  SIGKILL after :data:`TERM_GRACE` seconds. When the leader is gone, whatever
  is left of its process group is killed (background jobs would otherwise hold
  the pipes open forever), remaining output is drained for at most
  :data:`DRAIN_SECONDS`, and the EXIT frame is sent last.

A command that cannot be started (missing program or cwd, no permission)
gets a message on its stderr stream and exit code 127 (not found) or 126,
like a shell; that is a result, not a protocol error.

With a :class:`~cleanroom.agent.imageroot.CommandRoot` the command runs
chrooted into a user image, as the image's user, with the image's
environment; ``cwd`` is then a path inside that root.
"""

from __future__ import annotations

import contextlib
import errno
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
from cleanroom.agent.protocol import MAX_DATA_CHUNK, FrameType, encode_frame

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from cleanroom.agent.imageroot import CommandRoot

__all__ = ["DRAIN_SECONDS", "TERM_GRACE", "RunningCommand"]

TERM_GRACE = 2.0
DRAIN_SECONDS = 5.0
_STDIN_QUEUE = 16

Send = Callable[[bytes], None]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


class RunningCommand:
    """One command from start to EXIT frame. Create, then :meth:`start`."""

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
        self._pid_lock = threading.Lock()
        self._reaped = False
        self._stdin_q: queue.Queue[bytes | None] | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._wake_closed = False
        self._threads: list[threading.Thread] = []
        self.done = threading.Event()
        """Set just before the EXIT frame is sent: the next exec may start."""

    def start(self) -> None:
        """Spawn the command and its threads; never raises for a bad command."""
        req = self._req
        root = self._root
        if root is None:
            env = dict(DEFAULT_ENV)
            if req.env is not None:
                env.update(req.env)
        else:
            env = root.env_for(req.env)
        streamed = req.stdin == "stream"
        started = time.monotonic()
        try:
            # In a user image, chroot and chdir happen in the child (cwd is a path
            # in the image); the program is looked up along the image's PATH.
            # preexec_fn is safe here: the session joins the previous command's
            # threads before starting the next, so no other thread holds a lock.
            proc = subprocess.Popen(
                list(req.argv),
                stdin=subprocess.PIPE if streamed else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self._cwd if root is None else None,
                env=env,
                start_new_session=True,
                close_fds=True,
                preexec_fn=None if root is None else root.preexec(self._cwd),  # noqa: PLW1509
            )
        except OSError as exc:
            self._fail_to_start(exc, started)
            return
        self._proc = proc
        if streamed:
            self._stdin_q = queue.Queue(_STDIN_QUEUE)
            self._spawn(self._stdin_writer)
        output = self._spawn(self._output)
        self._spawn(lambda: self._wait(started, output))

    def _spawn(self, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _fail_to_start(self, exc: OSError, started: float) -> None:
        code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
        where = exc.filename if exc.filename is not None else self._req.argv[0]
        msg = f"cleanroom-agent: cannot run {where!r}: {exc.strerror or exc}\n"
        self.done.set()
        self._close_wake()
        try:
            self._send(encode_frame(FrameType.STDERR, msg.encode()))
            self._send(
                ExitStatus(
                    exit_code=code,
                    signal=None,
                    signal_name=None,
                    timed_out=False,
                    duration_ms=(time.monotonic() - started) * 1000,
                ).to_frame()
            )
        except AgentDisconnected:
            pass  # the session notices the broken channel on its next read

    # -- control from the session thread -------------------------------------------------

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the whole process group (no-op once the leader is reaped)."""
        with self._pid_lock:
            if self._proc is None or self._reaped:
                return
            with contextlib.suppress(ProcessLookupError):  # already gone: nothing to signal
                os.killpg(self._proc.pid, signum)

    def stdin_data(self, data: bytes) -> None:
        """Queue stdin bytes (blocks while the queue is full); ignored without streamed stdin."""
        if self._stdin_q is not None and data:
            self._stdin_q.put(data)

    def stdin_eof(self) -> None:
        if self._stdin_q is not None:
            self._stdin_q.put(None)
            self._stdin_q = None

    def kill_and_wait(self) -> None:
        """End the command now (session ending): SIGKILL the group, join the threads."""
        self.signal(signal.SIGKILL)
        if self._stdin_q is not None:
            self._stdin_q.put(None)
        for thread in self._threads:
            thread.join()

    # -- threads ---------------------------------------------------------------------------

    def _stdin_writer(self) -> None:
        assert self._proc is not None
        assert self._proc.stdin is not None
        q = self._stdin_q
        assert q is not None
        fd = self._proc.stdin.fileno()
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
        # EPIPE on close: the command stopped reading, which is its right.
        with contextlib.suppress(OSError):
            self._proc.stdin.close()

    def _output(self) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        kinds = {proc.stdout.fileno(): FrameType.STDOUT, proc.stderr.fileno(): FrameType.STDERR}
        sel = selectors.DefaultSelector()
        for fd in kinds:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while len(sel.get_map()) > 1:
                for key, _ in sel.select():
                    fd = key.fd
                    if fd == self._wake_r:
                        return  # drain deadline passed
                    data = os.read(fd, MAX_DATA_CHUNK)
                    if data:
                        self._send(encode_frame(kinds[fd], data))
                    else:
                        sel.unregister(fd)
        except AgentDisconnected:
            self.signal(signal.SIGKILL)  # nobody is listening any more
        finally:
            sel.close()
            proc.stdout.close()
            proc.stderr.close()

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
        # The leader is reaped, but its group id stays valid while members live.
        with contextlib.suppress(ProcessLookupError, PermissionError):  # no member left
            os.killpg(proc.pid, signal.SIGKILL)
        with self._pid_lock:
            self._reaped = True
        output.join(DRAIN_SECONDS)
        if output.is_alive():
            # A process outside the group (setsid daemon) still holds a pipe.
            self._log("output still open after the command exited; closing it")
            os.write(self._wake_w, b"x")
            output.join()
        self._close_wake()
        if rc < 0:
            status = ExitStatus(128 - rc, -rc, _signal_name(-rc), timed_out, duration_ms)
        else:
            status = ExitStatus(rc, None, None, timed_out, duration_ms)
        self.done.set()
        with contextlib.suppress(AgentDisconnected):  # the session sees it on its next read
            self._send(status.to_frame())

    def _close_wake(self) -> None:
        if self._wake_closed:
            return
        self._wake_closed = True
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
