"""The guest end of the agent channel: a blocking byte stream over file descriptors.

Stdlib only: this module runs inside the guest.

``SPEC`` forms (``--channel SPEC`` or kernel cmdline ``cleanroom.channel=SPEC``):

* ``virtio-serial:NAME`` -- ``/dev/virtio-ports/NAME`` opened read/write
  (waits for udev-less devtmpfs to show it). A virtio port reads EOF while the
  host end is not connected, so the session keeps polling until the first bytes
  arrive (:attr:`Channel.eof_until_first_data`).
* ``vsock:PORT`` -- listen on AF_VSOCK (any CID) and accept one connection.
* ``stdio`` -- fds 0 and 1 (host tests run the agent as a subprocess). They are
  duplicated and fds 0/1 are pointed at /dev/null and stderr, so stray output
  can never corrupt the stream.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.agent.errors import AgentDisconnected, AgentError

__all__ = ["Channel", "channel_spec_from_cmdline", "open_channel"]

_READ_SIZE = 256 * 1024


@dataclass
class Channel:
    """Blocking reads from ``rfd``; whole, thread-safe writes to ``wfd``."""

    rfd: int
    wfd: int
    eof_until_first_data: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def read(self) -> bytes:
        """Up to 256 KiB; ``b""`` at end of stream. Raises AgentDisconnected on error."""
        try:
            return os.read(self.rfd, _READ_SIZE)
        except OSError as exc:
            raise AgentDisconnected(f"channel read failed: {exc}") from exc

    def send(self, data: bytes) -> None:
        """Write all of ``data`` atomically with respect to other senders.

        Blocks while the peer does not read: that is the protocol's flow control.
        """
        with self._lock:
            view = memoryview(data)
            try:
                while view:
                    n = os.write(self.wfd, view)
                    view = view[n:]
            except OSError as exc:
                raise AgentDisconnected(f"channel write failed: {exc}") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in {self.rfd, self.wfd}:
            # Already gone with the peer: nothing left to release.
            with contextlib.suppress(OSError):
                os.close(fd)


def channel_spec_from_cmdline(cmdline: str) -> str | None:
    """The value of ``cleanroom.channel=`` in a kernel command line, if present."""
    for word in cmdline.split():
        if word.startswith("cleanroom.channel="):
            return word.partition("=")[2]
    return None


def _virtio_port_device(name: str, default: str) -> str:
    """``/dev/vportNpM`` for the port called ``name``: the /dev/virtio-ports/NAME
    symlink is made by udev, which the guest does not run, so look in sysfs."""
    if Path(default).exists():
        return default
    with contextlib.suppress(OSError):
        for dev in Path("/sys/class/virtio-ports").iterdir():
            with contextlib.suppress(OSError):
                if (dev / "name").read_text().strip() == name:
                    return f"/dev/{dev.name}"
    return default


def open_channel(spec: str, *, wait_seconds: float = 10.0) -> Channel:
    """Open the channel named by ``spec``; raises :class:`AgentError` if impossible."""
    kind, _, arg = spec.partition(":")
    if kind == "stdio" and not arg:
        rfd, wfd = os.dup(0), os.dup(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        return Channel(rfd, wfd)
    if kind == "virtio-serial" and arg and "/" not in arg:
        path = f"/dev/virtio-ports/{arg}"
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fd = os.open(_virtio_port_device(arg, path), os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
                break
            except FileNotFoundError as exc:
                if time.monotonic() > deadline:
                    raise AgentError(f"{path} did not appear") from exc
                time.sleep(0.02)
            except OSError as exc:
                raise AgentError(f"cannot open {path}: {exc}") from exc
        return Channel(fd, fd, eof_until_first_data=True)
    if kind == "vsock" and arg.isdigit():
        try:
            with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as lsock:
                lsock.bind((socket.VMADDR_CID_ANY, int(arg)))
                lsock.listen(1)
                conn, _ = lsock.accept()
        except OSError as exc:
            raise AgentError(f"vsock port {arg}: {exc}") from exc
        fd = conn.detach()
        return Channel(fd, fd)
    raise AgentError(f"invalid channel spec {spec!r}")
