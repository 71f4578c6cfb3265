"""The host's framed byte stream to one guest agent, and request checks.

:class:`FrameStream` writes frames (serialized by a lock) and decodes the
guest's as they arrive; :func:`checked` refuses locally a request the guest
would refuse to parse (which would end the whole session); :func:`aiter_chunks`
re-cuts a byte source into DATA-sized pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

from cleanroom.agent.errors import AgentDisconnected, AgentProtocolError, AgentRemoteError
from cleanroom.agent.filemessages import parse_artifacts, parse_changes
from cleanroom.agent.messages import parse_configure, parse_error, parse_exec
from cleanroom.agent.protocol import MAX_DATA_CHUNK, Frame, FrameDecoder, FrameType

__all__ = ["FrameStream", "aiter_chunks", "checked"]

_READ_SIZE = 256 * 1024


def _chunks(data: bytes) -> Iterable[bytes]:
    for start in range(0, len(data), MAX_DATA_CHUNK):
        yield data[start : start + MAX_DATA_CHUNK]


async def aiter_chunks(
    source: AsyncIterator[bytes] | Iterable[bytes] | bytes,
) -> AsyncIterator[bytes]:
    """Yield ``source`` re-cut to at most MAX_DATA_CHUNK bytes per piece, skipping empties."""
    if isinstance(source, bytes | bytearray | memoryview):
        for piece in _chunks(bytes(source)):
            yield piece
    elif isinstance(source, AsyncIterator):
        async for chunk in source:
            for piece in _chunks(bytes(chunk)):
                yield piece
    else:
        for chunk in source:
            for piece in _chunks(bytes(chunk)):
                yield piece


_PARSERS = {
    FrameType.EXEC: parse_exec,
    FrameType.CONFIGURE: parse_configure,
    FrameType.CHANGES: parse_changes,
    FrameType.ARTIFACTS: parse_artifacts,
}


def checked(frame: bytes) -> bytes:
    """``frame`` if the guest would accept it; else ValueError, raised here.

    A request the guest refuses to parse ends the whole session, so a bad
    argument (empty argv, ``=`` in an env name, prefix 33) fails locally.
    """
    (decoded,) = FrameDecoder().feed(frame)
    try:
        _PARSERS[decoded.type](decoded.payload)
    except AgentProtocolError as exc:
        raise ValueError(f"invalid request: {exc.message}") from exc
    return frame


class FrameStream:
    """Frames over ``reader``/``writer``; failures of the stream raise AgentDisconnected."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder()
        self._write_lock = asyncio.Lock()
        self.stale: frozenset[FrameType] = frozenset()
        """An abandoned request: skip the guest's frames up to one of these (its last reply)."""

    async def send(self, data: bytes) -> None:
        """Write one whole frame (or several) and wait until the stream took it."""
        async with self._write_lock:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise AgentDisconnected(f"channel write failed: {exc}") from exc

    async def recv(self) -> Frame:
        """The guest's next frame; the stream's end raises AgentDisconnected."""
        while (frame := self._decoder.pop()) is None:
            try:
                data = await self._reader.read(_READ_SIZE)
            except (ConnectionError, OSError) as exc:
                raise AgentDisconnected(f"channel read failed: {exc}") from exc
            if not data:
                raise AgentDisconnected("the guest agent closed the channel")
            self._decoder.push(data)
        return frame

    async def reply(self, *types: FrameType) -> Frame:
        """The next frame, which must be one of ``types``; an ERROR frame raises."""
        frame = await self.recv()
        if frame.type in self.stale:
            self.stale = frozenset()  # the pending request got its last reply
        if frame.type is FrameType.ERROR:
            err = parse_error(frame.payload)
            raise AgentRemoteError(err.code, err.message)
        if frame.type not in types:
            names = "/".join(t.name for t in types)
            raise AgentProtocolError(f"expected {names}, got {frame.type.name}")
        return frame

    async def skip_stale(self) -> None:
        """Read past what an abandoned request still gets, up to its last reply."""
        while self.stale:
            if (await self.recv()).type in self.stale:
                self.stale = frozenset()

    def write_now(self, data: bytes) -> None:
        """Write ``data`` without waiting, ignoring a broken stream (for an abandoned request).

        A plain write() is atomic with respect to other frames."""
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self._writer.write(data)

    async def close(self) -> None:
        """Close the stream (idempotent)."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
