"""A local directory as a tar stream for ``POST /v1/workspaces``, made as it is sent.

The archive is the server's own walker's (:mod:`cleanroom.workspace_tree`: the
same files kept, links kept as links, special files skipped), written by a
thread into a small bounded queue and sent chunk by chunk: it is never held
whole, and a slow connection slows the walk instead of filling memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import BinaryIO, cast

__all__ = ["TAR_TYPE", "UPLOAD_PATH", "async_tar_chunks", "tar_chunks"]

TAR_TYPE = "application/x-tar"
UPLOAD_PATH = "/v1/workspaces"
_PIECE = 256 * 1024
_QUEUED = 4


class _Stopped(Exception):
    """The reader went away: the walk stops."""


class _QueueWriter:
    """A write-only binary file whose bytes go into ``out`` in pieces."""

    def __init__(
        self, out: queue.Queue[bytes | BaseException | None], stop: threading.Event
    ) -> None:
        self._out = out
        self._stop = stop
        self._buffer = bytearray()
        self._written = 0

    def tell(self) -> int:
        return self._written

    def write(self, data: bytes) -> int:
        self._buffer += data
        self._written += len(data)
        while len(self._buffer) >= _PIECE:
            self.send(bytes(self._buffer[:_PIECE]))
            del self._buffer[:_PIECE]
        return len(data)

    def flush_all(self) -> None:
        if self._buffer:
            self.send(bytes(self._buffer))
            self._buffer.clear()

    def send(self, item: bytes | BaseException | None) -> None:
        """Queue ``item`` (a chunk, the walk's error, None at the end) for the reader."""
        while not self._stop.is_set():
            try:
                self._out.put(item, timeout=0.2)
            except queue.Full:
                continue
            return
        raise _Stopped


def tar_chunks(source: Path) -> Generator[bytes, None, None]:
    """``source``'s tree as tar chunks (raises ``InvalidRequest`` like
    :func:`cleanroom.workspace_tree.archive_workspace`). Closing the iterator
    early stops the walk."""
    from cleanroom.workspace_tree import archive_workspace  # noqa: PLC0415 -- on use only

    out: queue.Queue[bytes | BaseException | None] = queue.Queue(_QUEUED)
    stop = threading.Event()
    writer = _QueueWriter(out, stop)

    def walk() -> None:
        try:
            archive_workspace(source, cast("BinaryIO", writer))
            writer.flush_all()
            writer.send(None)
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 -- handed to the reader
            try:
                writer.send(exc)
            except _Stopped:
                return

    thread = threading.Thread(target=walk, name="cleanroom-upload", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(5)


async def async_tar_chunks(source: Path) -> AsyncIterator[bytes]:
    """:func:`tar_chunks` for an asyncio client (each chunk is awaited off the loop)."""
    import asyncio  # noqa: PLC0415

    chunks = tar_chunks(source)
    try:
        while (chunk := await asyncio.to_thread(next, chunks, b"")) != b"":
            yield chunk
    finally:
        chunks.close()
