"""The sync client's HTTP/1.1 transport against a scripted peer on a unix socket:
every framing it reads, and a clear failure kind for everything it does not."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.client._http import Failure, open_request


class Peer:
    """Scripted servers on ``path``: each accepts one connection, reads the
    request head, sends its reply and closes. Everything is joined at teardown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads: list[threading.Thread] = []
        self._release = threading.Event()

    def serve_once(self, reply: bytes, *, hold: bool = False) -> list[bytes]:
        """Start one; with ``hold`` it answers only at teardown. Returns the heads seen."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(1)
        seen: list[bytes] = []

        def run() -> None:
            with listener:
                conn, _ = listener.accept()
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data and (piece := conn.recv(4096)):
                        data += piece
                    seen.append(data)
                    if hold:
                        self._release.wait(10)
                    with contextlib.suppress(OSError):  # the client may be gone
                        conn.sendall(reply)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)
        return seen

    def close(self) -> None:
        self._release.set()
        for thread in self._threads:
            thread.join(10)


@pytest.fixture
def peer() -> Iterator[Peer]:
    with tempfile.TemporaryDirectory(prefix="crh-") as tmp:
        p = Peer(Path(tmp) / "s.sock")
        try:
            yield p
        finally:
            p.close()


def _get(path: Path, *, read_timeout: float | None = 5.0, body: object = None) -> bytes:
    method = "GET" if body is None else "POST"
    with open_request(
        "http://cleanroom",
        path,
        method,
        "/v1/x",
        json_body=body,
        connect_timeout=2,
        read_timeout=read_timeout,
    ) as response:
        assert response.status == 200
        return response.read()


def test_content_length_body_and_request_head(peer: Peer) -> None:
    seen = peer.serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert _get(peer.path, body={"a": 1}) == b"hello"
    head = seen[0].decode()
    assert head.startswith("POST /v1/x HTTP/1.1\r\n")
    assert "Connection: close\r\n" in head
    assert "Content-Type: application/json\r\n" in head
    assert "Content-Length: 8\r\n" in head  # json.dumps({"a": 1})


def test_chunked_lines_with_extensions_and_trailers(peer: Peer) -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\n6\r\n:1}\n{"\r\n6\r\nb":2}\n\r\n0\r\nx-trailer: 1\r\n\r\n'
    )
    peer.serve_once(reply)
    with open_request(
        "http://x", peer.path, "GET", "/", connect_timeout=2, read_timeout=5
    ) as response:
        assert list(response.lines()) == [b'{"a":1}\n', b'{"b":2}\n']


def test_body_until_close(peer: Peer) -> None:
    peer.serve_once(b"HTTP/1.0 200 OK\r\n\r\nall of it")
    assert _get(peer.path) == b"all of it"


@pytest.mark.parametrize(
    "reply",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
)
def test_what_is_not_http_is_lost(peer: Peer, reply: bytes) -> None:
    peer.serve_once(reply)
    with pytest.raises(Failure) as info:
        _get(peer.path)
    assert info.value.kind == "lost"


def test_silent_server_is_a_timeout(peer: Peer) -> None:
    peer.serve_once(b"HTTP/1.1 200 OK\r\n\r\n", hold=True)
    with pytest.raises(Failure) as info:
        _get(peer.path, read_timeout=0.2)
    assert info.value.kind == "timeout"


def test_no_server_is_connect(peer: Peer) -> None:
    with pytest.raises(Failure) as info:
        _get(peer.path)
    assert info.value.kind == "connect"
