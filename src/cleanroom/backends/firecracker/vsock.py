"""Host side of Firecracker's hybrid vsock: a UNIX socket plus a one-line handshake.

The host connects to the VMM's ``uds_path``, sends ``CONNECT <port>\\n`` and,
if a guest process listens on that vsock port, reads ``OK <host_port>\\n``;
from then on the socket is the guest stream. Until the guest listens the VMM
closes the connection (or the socket does not exist yet), so the client
retries with a short backoff until the deadline. A reply that is not ``OK``
is a protocol error and is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "HANDSHAKE_REPLY_MAX",
    "HybridVsockError",
    "HybridVsockProtocolError",
    "HybridVsockTimeout",
    "connect_hybrid_vsock",
]

HANDSHAKE_REPLY_MAX = 64
"""Longest acceptable ``OK <port>`` line; anything longer is garbage."""
_SUN_PATH_MAX = 107
_BACKOFF_START = 0.005
_BACKOFF_MAX = 0.1


class HybridVsockError(Exception):
    """Base: the guest stream could not be established."""


class HybridVsockProtocolError(HybridVsockError):
    """The peer answered something other than ``OK <port>\\n``."""


class HybridVsockTimeout(HybridVsockError):
    """No guest listener answered before the deadline; ``last_error`` says what was seen."""

    def __init__(self, message: str, last_error: str) -> None:
        super().__init__(message)
        self.last_error = last_error


async def _open(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return await asyncio.open_unix_connection(path)
    # sun_path holds 108 bytes; reach a deep socket through its directory's fd.
    dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return await asyncio.open_unix_connection(f"/proc/self/fd/{dir_fd}/{path.name}")
    finally:
        os.close(dir_fd)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, RuntimeError):
        await writer.wait_closed()


async def _handshake_reply(reader: asyncio.StreamReader) -> bytes:
    """The reply line without its newline; b"" if the peer closed first."""
    line = bytearray()
    while len(line) <= HANDSHAKE_REPLY_MAX:
        byte = await reader.read(1)
        if not byte:
            return b""
        if byte == b"\n":
            return bytes(line)
        line += byte
    raise HybridVsockProtocolError(f"handshake reply too long: {bytes(line)!r}")


def _check_ok(reply: bytes) -> None:
    words = reply.split(b" ")
    if len(words) != 2 or words[0] != b"OK" or not words[1].isdigit():
        raise HybridVsockProtocolError(f"unexpected handshake reply {reply!r}")


async def connect_hybrid_vsock(
    uds_path: Path,
    port: int,
    deadline: float,
    *,
    vmm_alive: Callable[[], bool] | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to guest vsock ``port`` through ``uds_path`` before ``deadline``
    (a ``loop.time()`` value).

    Raises ``HybridVsockTimeout`` at the deadline, ``HybridVsockProtocolError``
    on a garbage reply, and ``HybridVsockError`` if ``vmm_alive`` says the VMM
    has gone. Bytes the guest sends right after ``OK`` stay in the reader.
    """
    loop = asyncio.get_running_loop()
    backoff = _BACKOFF_START
    last_error = "not tried"
    request = f"CONNECT {port}\n".encode()
    while True:
        if vmm_alive is not None and not vmm_alive():
            raise HybridVsockError(f"VMM exited while connecting ({last_error})")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise HybridVsockTimeout(
                f"no listener on guest vsock port {port} before the deadline ({last_error})",
                last_error,
            )
        try:
            reader, writer = await asyncio.wait_for(_open(uds_path), remaining)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            last_error = f"{type(exc).__name__}: {exc.strerror or exc}"
        except TimeoutError:
            continue
        except OSError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            try:
                writer.write(request)
                await writer.drain()
                reply = await asyncio.wait_for(
                    _handshake_reply(reader), max(0.0, deadline - loop.time())
                )
                if reply:
                    _check_ok(reply)
                    return reader, writer
                last_error = "connection closed before OK (guest not listening yet)"
            except (ConnectionError, TimeoutError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            except BaseException:
                await _close(writer)
                raise
            await _close(writer)
        await asyncio.sleep(max(0.0, min(backoff, deadline - loop.time())))
        backoff = min(backoff * 2, _BACKOFF_MAX)
