"""A hostile guest answering CHANGES/ARTIFACTS: every violation is a stable error, nothing kept.

The guest here is a socket peer that sends crafted frames (the real agent
never sends these); the host side under test is the real AgentClient and
the real cleanroom.changes library.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from pathlib import Path

import pytest

from cleanroom.agent.errors import AgentError
from cleanroom.agent.filemessages import FileEntry, FileLimits, FilesDone
from cleanroom.agent.host import AgentClient
from cleanroom.agent.protocol import FrameDecoder, FrameType, encode_frame
from cleanroom.changes import HostManifest, collect_artifacts, collect_changes
from cleanroom.errors import CleanroomError

DATA = b"hello"
SHA = hashlib.sha256(DATA).hexdigest()


def _entry(path: str = "f", **over: object) -> bytes:
    obj: dict[str, object] = {
        "path": path,
        "change": "added",
        "type": "file",
        "mode": 0o644,
        "size": len(DATA),
        "sha256": SHA,
        "target": None,
        "content": True,
        "skipped": None,
    }
    obj.update(over)
    return encode_frame(FrameType.FILE_ENTRY, json.dumps(obj).encode())


def _data(data: bytes = DATA) -> bytes:
    return encode_frame(FrameType.FILE_DATA, data)


def _done(entries: int = 1, nbytes: int = len(DATA)) -> bytes:
    return FilesDone(entries, nbytes).to_frame()


GOOD = _entry() + _data() + _done()

HOSTILE = {
    "dotdot": _entry("../escape") + _data() + _done(),
    "absolute": _entry("/etc/passwd") + _data() + _done(),
    "dot-component": _entry("a/./b") + _data() + _done(),
    "nul": _entry("a\u0000b") + _data() + _done(),
    "data-beyond-size": _entry() + _data(DATA + b"!") + _done(1, 6),
    "data-short": _entry() + _data(DATA[:2]) + _done(),
    "data-unannounced": _data() + _done(0, 0),
    "sha-mismatch": _entry() + _data(b"HELLO") + _done(),
    "duplicate": _entry() + _data() + _entry() + _data() + _done(2, 10),
    "unknown-key": encode_frame(FrameType.FILE_ENTRY, b'{"path":"f","x":1}') + _done(),
    "unknown-type": _entry(type="device", content=False, sha256=None) + _done(1, 0),
    "content-on-symlink": _entry(type="symlink", target="x") + _data() + _done(),
    "oversized-file": _entry(size=1 << 40) + _done(1, 1 << 40),
    "done-lies": _entry() + _data() + _done(5, 5),
    "bad-sha-text": _entry(sha256="Z" * 64) + _data() + _done(),
    "negative-mode": _entry(mode=-1) + _data() + _done(),
}


def _code(exc: BaseException) -> str:
    assert isinstance(exc, AgentError | CleanroomError)
    return exc.code


async def _serve(peer: socket.socket, reply: bytes) -> None:
    """Read the request frame, answer with ``reply``."""
    loop = asyncio.get_running_loop()
    decoder = FrameDecoder()
    while not decoder.feed(await loop.sock_recv(peer, 65536)):
        pass
    await loop.sock_sendall(peer, reply)


async def _client() -> tuple[AgentClient, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return AgentClient(reader, writer), theirs


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_changes_reply(tmp_path: Path, name: str) -> None:
    client, peer = await _client()
    spool = tmp_path / "spool"
    try:
        server = asyncio.create_task(_serve(peer, HOSTILE[name]))
        with pytest.raises((AgentError, CleanroomError)) as err:
            await collect_changes(client, spool, HostManifest({}), FileLimits(max_files=3))
        assert _code(err.value) == "guest_agent_failed"
        await server
    finally:
        await client.close()
        peer.close()
    assert not spool.exists()


async def test_too_many_entries(tmp_path: Path) -> None:
    client, peer = await _client()
    many = b"".join(_entry(f"f{i}") + _data() for i in range(3)) + _done(3, 15)
    try:
        server = asyncio.create_task(_serve(peer, many))
        with pytest.raises(AgentError):
            await collect_changes(client, tmp_path / "s", HostManifest({}), FileLimits(max_files=2))
        await server
    finally:
        await client.close()
        peer.close()


async def test_an_artifact_entry_in_a_changes_reply(tmp_path: Path) -> None:
    client, peer = await _client()
    try:
        server = asyncio.create_task(_serve(peer, _entry(change="artifact") + _data() + _done()))
        with pytest.raises(CleanroomError) as err:
            await collect_changes(client, tmp_path / "s", HostManifest({}))
        assert err.value.code == "guest_agent_failed"
        await server
    finally:
        await client.close()
        peer.close()


@pytest.mark.parametrize("name", ["dotdot", "absolute", "sha-mismatch", "duplicate"])
async def test_hostile_artifacts_reply(tmp_path: Path, name: str) -> None:
    client, peer = await _client()
    reply = HOSTILE[name].replace(b'"change": "added"', b'"change": "artifact"')
    dest = tmp_path / "artifacts"
    try:
        server = asyncio.create_task(_serve(peer, reply))
        with pytest.raises((AgentError, CleanroomError)) as err:
            await collect_artifacts(client, ["*"], dest)
        assert _code(err.value) == "guest_agent_failed"
        await server
    finally:
        await client.close()
        peer.close()
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing kept, nothing outside


async def test_a_well_formed_reply_is_accepted(tmp_path: Path) -> None:
    client, peer = await _client()
    try:
        server = asyncio.create_task(_serve(peer, GOOD))
        cs = await collect_changes(client, tmp_path / "s", HostManifest({}))
        await server
    finally:
        await client.close()
        peer.close()
    (change,) = cs.changes
    assert change.blob is not None
    assert change.blob.read_bytes() == DATA
    assert FileEntry("f", "added", "file", 0o644, 5, SHA, content=True).path == change.path
