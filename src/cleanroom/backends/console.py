"""A guest console kept on disk up to a byte limit, whatever the guest writes.

The VMM gets one end of a socketpair as its console chardev instead of a file;
a host thread reads the other end and appends to ``console.log`` until the
limit, then keeps reading and drops the rest, so a guest flooding its console
(``cat /dev/zero > /dev/hvc0``) neither fills the host disk nor blocks. A
marker line says where the log was cut. The thread ends when the VMM's end
closes (the VMM exited) or :meth:`ConsoleLog.close` shuts the socket down.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import BinaryIO

from cleanroom.config_limits import DEFAULT_CONSOLE_LOG_BYTES

__all__ = ["ConsoleLog", "truncation_marker"]

_READ_SIZE = 64 * 1024
_JOIN_SECONDS = 5.0


def truncation_marker(limit: int) -> bytes:
    """The line appended once the console passed ``limit`` bytes."""
    return f"\n[cleanroom: console output past {limit} bytes dropped]\n".encode()


class ConsoleLog:
    """The console of one guest: hand :attr:`vmm_fd` to the VMM, then :meth:`start`."""

    def __init__(self, path: Path, limit: int = DEFAULT_CONSOLE_LOG_BYTES) -> None:
        self.path = path
        self.limit = limit
        self._host, self._vmm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._thread: threading.Thread | None = None
        self.written = 0
        """Bytes of console output kept (at most ``limit``)."""
        self.dropped = 0
        """Bytes of console output read and dropped past the limit."""

    @property
    def vmm_fd(self) -> int:
        """The descriptor the VMM inherits as its console (valid until :meth:`start`)."""
        return self._vmm.fileno()

    def start(self) -> None:
        """The VMM holds its end now: close ours and start copying to the log."""
        self._vmm.close()
        out = self.path.open("ab", buffering=0)  # unbuffered: tails are read during boot
        self._thread = threading.Thread(
            target=self._pump, args=(out,), name=f"console:{self.path.parent.name}", daemon=True
        )
        self._thread.start()

    def _pump(self, out: BinaryIO) -> None:
        try:
            while True:
                try:
                    data = self._host.recv(_READ_SIZE)
                except OSError:
                    break
                if not data:
                    break
                room = self.limit - self.written
                if room > 0:
                    kept = data[:room]
                    out.write(kept)
                    self.written += len(kept)
                    if self.written >= self.limit:
                        out.write(truncation_marker(self.limit))
                self.dropped += max(0, len(data) - max(room, 0))
        finally:
            out.close()

    def close(self) -> None:
        """Stop reading (the VMM should be dead by now), wait for the thread; idempotent."""
        self._vmm.close()
        with contextlib.suppress(OSError):
            self._host.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(_JOIN_SECONDS)
            self._thread = None
        self._host.close()
