"""The sync client's HTTP/1.1 transport against a scripted peer on a unix socket:
every framing it reads, and a clear failure kind for everything it does not."""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.client._http import Failure, open_request


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="crh-") as tmp:
        yield Path(tmp) / "s.sock"


def _serve_once(path: Path, reply: bytes, *, hold: float = 0.0) -> list[bytes]:
    """Accept one connection, read the request head, send ``reply``, close."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    seen: list[bytes] = []

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            seen.append(data)
            if hold:
                threading.Event().wait(hold)
            conn.sendall(reply)
        listener.close()

    threading.Thread(target=run, daemon=True).start()
    return seen


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


def test_content_length_body_and_request_head(sock_path: Path) -> None:
    seen = _serve_once(sock_path, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert _get(sock_path, body={"a": 1}) == b"hello"
    head = seen[0].decode()
    assert head.startswith("POST /v1/x HTTP/1.1\r\n")
    assert "Connection: close\r\n" in head
    assert "Content-Type: application/json\r\n" in head
    assert "Content-Length: 8\r\n" in head  # json.dumps({"a": 1})


def test_chunked_lines_with_extensions_and_trailers(sock_path: Path) -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\n6\r\n:1}\n{"\r\n6\r\nb":2}\n\r\n0\r\nx-trailer: 1\r\n\r\n'
    )
    _serve_once(sock_path, reply)
    with open_request(
        "http://x", sock_path, "GET", "/", connect_timeout=2, read_timeout=5
    ) as response:
        assert list(response.lines()) == [b'{"a":1}\n', b'{"b":2}\n']


def test_body_until_close(sock_path: Path) -> None:
    _serve_once(sock_path, b"HTTP/1.0 200 OK\r\n\r\nall of it")
    assert _get(sock_path) == b"all of it"


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
def test_what_is_not_http_is_lost(sock_path: Path, reply: bytes) -> None:
    _serve_once(sock_path, reply)
    with pytest.raises(Failure) as info:
        _get(sock_path)
    assert info.value.kind == "lost"


def test_silent_server_is_a_timeout(sock_path: Path) -> None:
    _serve_once(sock_path, b"HTTP/1.1 200 OK\r\n\r\n", hold=2.0)
    with pytest.raises(Failure) as info:
        _get(sock_path, read_timeout=0.2)
    assert info.value.kind == "timeout"


def test_no_server_is_connect(sock_path: Path) -> None:
    with pytest.raises(Failure) as info:
        _get(sock_path)
    assert info.value.kind == "connect"
