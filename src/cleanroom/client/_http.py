"""The synchronous client's HTTP/1.1 transport: a small client on a plain socket.

Why not a library here: ``import httpx`` costs more than every other part of a
``cleanroom exec`` process together (it loads httpcore, h11, anyio, and its own
command line with click, rich and pygments), and even the standard library's
``http.client`` costs ~30 ms (it loads ``email.parser`` for headers and
``ssl``), while the CLI start-up is part of every run's latency. The server
is ours and speaks plain HTTP/1.1: one request per connection (``Connection:
close``), JSON bodies, responses framed by ``Content-Length``, chunked
transfer coding (the NDJSON streams) or the end of the connection. That is
all this module reads; anything else is a ``lost`` failure. ``ssl`` is
imported only for an ``https://`` server. The asyncio client keeps httpx.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlsplit

from cleanroom.client._closing import Closing

__all__ = ["Failure", "Response", "open_request"]

FailureKind = Literal["connect", "timeout", "lost"]
Secure = Callable[[socket.socket, str], socket.socket]
"""``(connected socket, host) -> TLS socket with a verified server``; raises OSError
or a ``CleanroomError`` (closing the socket)."""

_MAX_LINE = 64 * 1024
_MAX_HEADERS = 100
_PIECE = 64 * 1024


class Failure(Exception):
    """The transport failed: no connection (``connect``), no answer in time
    (``timeout``), or the connection broke or carried something that is not HTTP (``lost``)."""

    def __init__(self, kind: FailureKind, cause: BaseException | str) -> None:
        self.kind: FailureKind = kind
        self.cause = str(cause) or type(cause).__name__
        super().__init__(f"{kind}: {self.cause}")


class _Malformed(Exception):
    """The peer sent something that is not the HTTP/1.1 this client reads."""


def _connect(
    base_url: str, uds: Path | None, timeout: float, secure: Secure | None
) -> tuple[socket.socket, str]:
    """A connected socket and the ``Host`` header value; raises OSError."""
    if uds is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(uds))
        except BaseException:
            sock.close()
            raise
        return sock, "cleanroom"  # names no real host
    url = urlsplit(base_url)
    host = url.hostname or ""
    tls = url.scheme == "https"
    port = url.port or (443 if tls else 80)
    sock = socket.create_connection((host, port), timeout=timeout)
    if tls and secure is not None:
        sock = secure(sock, host)
    elif tls:
        import ssl  # noqa: PLC0415 -- only remote https servers pay for it

        try:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
    return sock, host if url.port is None else f"{host}:{port}"


class Response(Closing):
    """An open response: ``status``, then its body read whole or line by line.

    Closing it (or leaving its ``with`` block) closes the connection, which is
    how a streamed run is abandoned. Reading raises :class:`Failure`.
    """

    def __init__(self, sock: socket.socket, stream: BinaryIO) -> None:
        self._sock = sock
        self._stream = stream
        self.status, self._headers = _read_head(stream)

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self._pieces())

    def lines(self) -> Iterator[bytes]:
        """The body's lines (with their newlines) as they arrive."""
        pending = b""
        for piece in self._pieces():
            pending += piece
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line + b"\n"
        if pending:
            yield pending

    def _pieces(self) -> Iterator[bytes]:
        try:
            yield from _body(self._stream, self._headers)
        except (OSError, _Malformed, ValueError) as exc:
            raise _failure(exc) from exc

    def close(self) -> None:
        """Drop the connection (the rest of the body is not read)."""
        self._stream.close()
        self._sock.close()


def _line(stream: BinaryIO) -> bytes:
    line = stream.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise _Malformed("line too long")
    if not line.endswith(b"\n"):
        raise _Malformed("connection closed mid-message")
    return line


def _read_head(stream: BinaryIO) -> tuple[int, dict[str, str]]:
    """The status code and the (lower-cased) headers; interim 1xx responses skipped."""
    while True:
        version, _, rest = _line(stream).partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise _Malformed(f"not an HTTP/1.x status line: {version[:20]!r}")
        headers: dict[str, str] = {}
        while (line := _line(stream)) not in (b"\r\n", b"\n"):
            if len(headers) >= _MAX_HEADERS:
                raise _Malformed("too many headers")
            name, colon, value = line.partition(b":")
            if not colon:
                raise _Malformed("header line without a colon")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if not 100 <= int(code) < 200:
            return int(code), headers


def _body(stream: BinaryIO, headers: dict[str, str]) -> Iterator[bytes]:
    """The body's bytes as they arrive, decoded from its framing."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int(_line(stream).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while _line(stream) not in (b"\r\n", b"\n"):
                    pass  # trailer fields: none are used
                return
            yield _exact(stream, size)
            if _line(stream).strip():
                raise _Malformed("chunk data longer than its size")
    elif (length := headers.get("content-length")) is not None:
        left = int(length)
        while left > 0:
            piece = _exact(stream, min(left, _PIECE))
            left -= len(piece)
            yield piece
    else:
        while piece := stream.read(_PIECE):
            yield piece


def _exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise _Malformed("connection closed mid-body")
    return data


def _failure(exc: BaseException) -> Failure:
    if isinstance(exc, TimeoutError):
        return Failure("timeout", exc)
    return Failure("lost", exc)


def _send_chunked(sock: socket.socket, chunks: Iterable[bytes]) -> None:
    """Send ``chunks`` in chunked transfer coding. A server that answers before
    the body ends (an error) and stops reading is not an error here: its answer
    is read next."""
    try:
        for chunk in chunks:
            if chunk:
                sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        return


def open_request(
    base_url: str,
    uds: Path | None,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    body_chunks: Iterable[bytes] | None = None,
    content_type: str | None = None,
    accept: str = "application/json",
    connect_timeout: float,
    read_timeout: float | None,
    headers: Mapping[str, str] | None = None,
    secure: Secure | None = None,
) -> Response:
    """Send one request and return its response once the status line and headers arrived.

    The body is ``json_body`` as JSON, or ``body_chunks`` streamed with chunked
    transfer coding (as ``content_type``). ``connect_timeout`` bounds
    connecting; ``read_timeout`` (``None``: no limit) bounds every later wait
    for the server. ``headers`` are sent too; ``secure`` makes the TLS
    connection of an ``https://`` server (default: the system's CAs). Raises
    :class:`Failure`.
    """
    extra = [f"{name}: {value}" for name, value in (headers or {}).items()]
    if any("\r" in line or "\n" in line for line in extra):
        raise Failure("connect", "a header holds a line break")
    try:
        sock, host = _connect(base_url, uds, connect_timeout, secure)
    except OSError as exc:  # refused, no such socket, or the connect timeout
        raise Failure("connect", exc) from exc
    body = b"" if json_body is None else json.dumps(json_body).encode()
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        f"Accept: {accept}",
        "Connection: close",
    ]
    if body_chunks is None:
        head.append(f"Content-Length: {len(body)}")
    else:
        head.append("Transfer-Encoding: chunked")
    if json_body is not None:
        head.append("Content-Type: application/json")
    elif content_type is not None:
        head.append(f"Content-Type: {content_type}")
    head.extend(extra)
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    stream = sock.makefile("rb")
    try:
        sock.settimeout(read_timeout)
        sock.sendall(request)
        if body_chunks is not None:
            _send_chunked(sock, body_chunks)
        return Response(sock, stream)
    except (OSError, _Malformed, ValueError) as exc:
        stream.close()
        sock.close()
        raise _failure(exc) from exc
    except BaseException:
        stream.close()
        sock.close()
        raise
