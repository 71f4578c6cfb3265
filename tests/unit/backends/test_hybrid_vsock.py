"""The hybrid-vsock client against a real UNIX-socket peer speaking Firecracker's bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from cleanroom.backends.firecracker.vsock import (
    HybridVsockError,
    HybridVsockProtocolError,
    HybridVsockTimeout,
    connect_hybrid_vsock,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def peer(path: Path, handler: Handler) -> AsyncIterator[list[bytes]]:
    """A UNIX-socket server at ``path``; yields the CONNECT lines it received."""
    seen: list[bytes] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.readline())
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_unix_server(wrapped, path=str(path))
    try:
        yield seen
    finally:
        server.close()
        await server.wait_closed()
        path.unlink(missing_ok=True)


async def echo_after_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"OK 1073741824\nearly")  # guest bytes right behind the OK line
    await writer.drain()
    data = await reader.readexactly(5)
    writer.write(data.upper())
    await writer.drain()
    await reader.read()


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    return None


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 400 Bad Request\r\n")
    await writer.drain()
    await reader.read()


def _deadline(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_success_keeps_bytes_after_ok(tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    async with peer(sock, echo_after_ok) as seen:
        reader, writer = await connect_hybrid_vsock(sock, 1024, _deadline(5))
        assert await reader.readexactly(5) == b"early"
        writer.write(b"hello")
        await writer.drain()
        assert await reader.readexactly(5) == b"HELLO"
        writer.close()
        await writer.wait_closed()
    assert seen == [b"CONNECT 1024\n"]


async def test_refusal_is_retried_until_the_deadline(tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    async with peer(sock, close_at_once) as seen:
        with pytest.raises(HybridVsockTimeout) as info:
            await connect_hybrid_vsock(sock, 52, _deadline(0.4))
    assert "closed before OK" in info.value.last_error
    assert len(seen) >= 2  # it retried
    assert set(seen) == {b"CONNECT 52\n"}


async def test_garbage_reply_fails_without_retry(tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    async with peer(sock, garbage) as seen:
        with pytest.raises(HybridVsockProtocolError, match="unexpected handshake reply"):
            await connect_hybrid_vsock(sock, 52, _deadline(5))
    assert len(seen) == 1


async def test_overlong_reply_is_garbage(tmp_path: Path) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"O" * 500)
        await writer.drain()
        await reader.read()

    sock = tmp_path / "v.sock"
    async with peer(sock, flood):
        with pytest.raises(HybridVsockProtocolError, match="too long"):
            await connect_hybrid_vsock(sock, 52, _deadline(5))


async def test_not_listening_then_listening(tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    refusals = 3

    async def refuse_then_accept(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal refusals
        if refusals > 0:
            refusals -= 1
            return
        await echo_after_ok(reader, writer)

    async def start_late() -> contextlib.AsyncExitStack:
        await asyncio.sleep(0.2)  # no socket file at all for a while
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(peer(sock, refuse_then_accept))
        return stack

    starter = asyncio.create_task(start_late())
    reader, writer = await connect_hybrid_vsock(sock, 1024, _deadline(10))
    stack = await starter
    try:
        assert await reader.readexactly(5) == b"early"
        assert refusals == 0
    finally:
        writer.close()
        await writer.wait_closed()
        await stack.aclose()


async def test_deadline_without_any_socket(tmp_path: Path) -> None:
    with pytest.raises(HybridVsockTimeout) as info:
        await connect_hybrid_vsock(tmp_path / "absent.sock", 1024, _deadline(0.2))
    assert "FileNotFoundError" in info.value.last_error


async def test_silent_peer_times_out(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    sock = tmp_path / "v.sock"
    async with peer(sock, silent):
        with pytest.raises(HybridVsockTimeout):
            await connect_hybrid_vsock(sock, 1024, _deadline(0.3))


async def test_dead_vmm_stops_retrying(tmp_path: Path) -> None:
    with pytest.raises(HybridVsockError, match="VMM exited") as info:
        await connect_hybrid_vsock(tmp_path / "x.sock", 1, _deadline(30), vmm_alive=lambda: False)
    assert not isinstance(info.value, HybridVsockTimeout)


async def test_long_socket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    sock = deep / "v.sock"
    assert len(str(sock)) > 108  # too long for sun_path: the client must go through the dir fd
    monkeypatch.chdir(deep)  # the peer binds by a short relative path
    async with peer(Path("v.sock"), echo_after_ok) as seen:
        reader, writer = await connect_hybrid_vsock(sock, 7, _deadline(5))
        assert await reader.readexactly(5) == b"early"
        writer.close()
        await writer.wait_closed()
    assert seen == [b"CONNECT 7\n"]
