"""Slow uploads over a real TCP listener: a trickling client is cut off with
``upload_timeout``, its slot is free again and nothing of it stays on disk.

Real server (uvicorn on 127.0.0.1, bearer token), real service, guests are agent
processes; the clients are raw sockets sending chunked bodies byte by byte.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from remote_server import RemoteServer, tcp_server

from cleanroom import paths
from cleanroom.config import LimitsConfig, RuntimeConfig
from cleanroom.service.uploads import MAX_PENDING_UPLOADS
from cleanroom.testing import AgentProcessBackend, agent_service

WINDOW = 0.5
MIN_BYTES = 4096
DEADLINE = 2.0


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("cleanroom.yaml", b"version: 1\n"), ("big", b"y" * 200_000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _uploads() -> list[str]:
    root = paths.state_dir() / "uploads"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@contextlib.contextmanager
def _serve(backend: AgentProcessBackend, window: float) -> Iterator[RemoteServer]:
    limits = LimitsConfig(
        upload_timeout_seconds=DEADLINE, upload_min_bytes=MIN_BYTES, upload_window_seconds=window
    )
    config = RuntimeConfig(default_backend="qemu", limits=limits)
    with tcp_server(agent_service(backend, config=config)) as running:
        yield running


@pytest.fixture
def remote(backend: AgentProcessBackend, state: Path) -> Iterator[RemoteServer]:
    with _serve(backend, WINDOW) as running:
        yield running


class _Trickle:
    """A raw HTTP/1.1 client that sends an upload's body ``size`` bytes every ``gap`` s."""

    def __init__(self, remote: RemoteServer, *, size: int, gap: float) -> None:
        host, port = remote.base_url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        head = (
            "POST /v1/workspaces HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            f"Authorization: {remote.headers['Authorization']}\r\n"
            "Content-Type: application/x-tar\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        self.sock.sendall(head.encode())
        self._size, self._gap = size, gap
        self.sent = 0
        self.refused_at: float | None = None
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        body = _archive()
        try:
            while self.sent < len(body):
                piece = body[self.sent : self.sent + self._size]
                self.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.sent += len(piece)
                time.sleep(self._gap)
            self.sock.sendall(b"0\r\n\r\n")
        except OSError:
            self.refused_at = time.monotonic()  # the server closed the connection

    def answer(self) -> tuple[int, dict[str, object], bytes]:
        """The status, the error body, and what followed it before the server closed
        (blocks until it did)."""
        received = b""
        try:
            while chunk := self.sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # closed with our later bytes unread: a reset after the answer, not an EOF
        self.sock.close()
        self._thread.join(10)
        head, _, body = received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = dict(
            line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:] if line
        )
        length = int(headers["content-length"])
        assert headers["connection"] == "close"
        return status, json.loads(body[:length]), body[length:]


def _wait_no_uploads() -> None:
    deadline = time.monotonic() + 10
    while _uploads():
        assert time.monotonic() < deadline, f"uploads left: {_uploads()}"
        time.sleep(0.05)


def test_a_trickling_client_is_cut_off(remote: RemoteServer) -> None:
    start = time.monotonic()
    client = _Trickle(remote, size=1, gap=0.01)
    status, body, rest = client.answer()
    took = time.monotonic() - start
    assert status == 408
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "upload_timeout"
    assert error["details"]["limit"] == "upload_window_seconds"
    assert error["details"]["min_bytes"] == MIN_BYTES
    assert rest == b""  # and the server closed the connection (recv gave b"")
    assert WINDOW * 0.9 < took < 4  # one window (and the limit says: not the deadline)
    assert client.sent < len(_archive())
    _wait_no_uploads()


def test_the_whole_upload_has_a_deadline(remote: RemoteServer) -> None:
    # 2 KiB every 0.1 s keeps the pace (4 KiB per 0.5 s) but takes 10 s, past the 2 s.
    start = time.monotonic()
    client = _Trickle(remote, size=2048, gap=0.1)
    status, body, _ = client.answer()
    assert status == 408
    error = body["error"]
    assert isinstance(error, dict)
    assert (error["code"], error["details"]["limit"]) == (
        "upload_timeout",
        "upload_timeout_seconds",
    )
    assert DEADLINE - 0.1 < time.monotonic() - start < DEADLINE + 4
    _wait_no_uploads()


def test_slow_clients_cannot_hold_every_slot(backend: AgentProcessBackend, state: Path) -> None:
    # A window long enough for all of them to be connected before the first is cut off
    # (as long as the whole deadline: whichever cuts them off first, they are cut off).
    with _serve(backend, window=DEADLINE) as remote:
        _slow_clients_come_and_go(remote)


def _slow_clients_come_and_go(remote: RemoteServer) -> None:
    slow = [_Trickle(remote, size=1, gap=0.05) for _ in range(MAX_PENDING_UPLOADS)]
    deadline = time.monotonic() + 10
    while len(_uploads()) < MAX_PENDING_UPLOADS:  # every one is being received
        assert time.monotonic() < deadline, _uploads()
        time.sleep(0.01)
    with httpx.Client(base_url=remote.base_url, headers=remote.headers, timeout=30) as http:
        busy = http.post(
            "/v1/workspaces", content=_archive(), headers={"content-type": "application/x-tar"}
        )
        assert busy.json()["error"]["code"] == "capacity_exhausted"  # they hold every slot
        for client in slow:
            status, body, _ = client.answer()
            assert status == 408, body
            assert body["error"]["code"] == "upload_timeout"  # type: ignore[index]
        _wait_no_uploads()
        # Every slot is free again: as many uploads as there are slots succeed.
        ids = []
        for _ in range(MAX_PENDING_UPLOADS):
            done = http.post(
                "/v1/workspaces", content=_archive(), headers={"content-type": "application/x-tar"}
            )
            assert done.status_code == 200, done.text
            ids.append(done.json()["workspace_id"])
        # And the service is well after all that.
        body = {"cwd": "/client/dir", "command": ["wc", "-c", "big"], "workspace_id": ids[0]}
        ran = http.post("/v1/exec", json=body)
        assert ran.json()["stdout"] == "200000 big\n", ran.text
