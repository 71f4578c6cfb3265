"""Running one command for the guest agent on pipes: process group, streamed I/O.

Stdlib only: this module runs inside the guest.

The command runs in a new session (so its process group id is its pid) with
pipes for stdout/stderr and, when the exec streams stdin, for stdin. Its
lifetime (stdin queue, timeout, drain, EXIT frame) is
:class:`~cleanroom.agent.process.CommandProcess`'s; here:

* output: one thread multiplexes both pipes with ``selectors`` and sends each
  read (at most :data:`MAX_DATA_CHUNK`) as a STDOUT/STDERR frame.
* signals go to the command's process group; when the leader is gone,
  whatever is left of that group is killed (background jobs would otherwise
  hold the pipes open forever).

A command that cannot be started gets its message on its stderr stream.

With a :class:`~cleanroom.agent.imageroot.CommandRoot` the command runs
chrooted into a user image, as the image's user, with the image's
environment; ``cwd`` is then a path inside that root.
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import subprocess
from collections.abc import Callable

from cleanroom.agent.process import DRAIN_SECONDS, TERM_GRACE, CommandProcess, child_setup
from cleanroom.agent.protocol import MAX_DATA_CHUNK, FrameType, encode_frame

__all__ = ["DRAIN_SECONDS", "TERM_GRACE", "RunningCommand"]


class RunningCommand(CommandProcess):
    """One command on pipes from start to EXIT frame. Create, then :meth:`start`."""

    def _popen(
        self, env: dict[str, str], preexec: Callable[[], None] | None
    ) -> subprocess.Popen[bytes]:
        streamed = self._req.stdin == "stream"
        proc = subprocess.Popen(
            list(self._req.argv),
            stdin=subprocess.PIPE if streamed else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self._cwd if preexec is None else None,
            env=env,
            start_new_session=True,
            close_fds=True,
            preexec_fn=child_setup(preexec),  # noqa: PLW1509
        )
        if proc.stdin is not None:
            self._stdin_fd = proc.stdin.fileno()
        return proc

    def _stdin_writer(self, q: queue.Queue[bytes | None]) -> None:
        super()._stdin_writer(q)
        assert self._proc is not None
        assert self._proc.stdin is not None
        # EPIPE on close: the command stopped reading, which is its right.
        with contextlib.suppress(OSError):
            self._proc.stdin.close()

    def _relay(self, sel: selectors.BaseSelector) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        kinds = {proc.stdout.fileno(): FrameType.STDOUT, proc.stderr.fileno(): FrameType.STDERR}
        for fd in kinds:
            sel.register(fd, selectors.EVENT_READ)
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
        finally:
            proc.stdout.close()
            proc.stderr.close()
