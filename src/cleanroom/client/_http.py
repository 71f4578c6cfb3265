"""The synchronous client's HTTP/1.1 transport: the standard library's ``http.client``.

Why not httpx here: ``import httpx`` costs more than every other part of a
``cleanroom exec`` process together (it loads httpcore, h11, anyio, and its own
command line with click, rich and pygments), and the CLI start-up is part of
every run's latency. The server speaks plain HTTP/1.1 with JSON bodies and
chunked NDJSON streams, which ``http.client`` handles; this module adds only
unix-socket connections, the two timeouts, and error classification. The
asyncio client keeps httpx.

Each request uses its own connection (sent with ``Connection: close``):
connecting to a local socket costs microseconds, and nothing can go stale
between calls.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = ["Failure", "Response", "open_request"]

FailureKind = Literal["connect", "timeout", "lost"]


class Failure(Exception):
    """The transport failed: no connection (``connect``), no answer in time
    (``timeout``), or the connection broke or carried something that is not HTTP (``lost``)."""

    def __init__(self, kind: FailureKind, cause: BaseException | str) -> None:
        self.kind: FailureKind = kind
        self.cause = str(cause) or type(cause).__name__
        super().__init__(f"{kind}: {self.cause}")


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket (the ``Host`` header names no real host)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("cleanroom", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _connection(base_url: str, uds: Path | None, timeout: float) -> http.client.HTTPConnection:
    if uds is not None:
        return _UnixConnection(uds, timeout)
    url = urlsplit(base_url)
    if url.scheme == "https":
        return http.client.HTTPSConnection(url.hostname or "", url.port, timeout=timeout)
    return http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout)


class Response:
    """An open response: ``status``, then its body read whole or line by line.

    Closing it (or leaving its ``with`` block) closes the connection, which is
    how a streamed run is abandoned. Reading raises :class:`Failure`.
    """

    def __init__(self, connection: http.client.HTTPConnection, raw: http.client.HTTPResponse):
        self._connection = connection
        self._raw = raw
        self.status: int = raw.status

    def read(self) -> bytes:
        """The whole body."""
        try:
            return self._raw.read()
        except (OSError, http.client.HTTPException) as exc:
            raise _failure(exc) from exc

    def lines(self) -> Iterator[bytes]:
        """The body's lines (with their newlines) as they arrive."""
        while True:
            try:
                line = self._raw.readline()
            except (OSError, http.client.HTTPException) as exc:
                raise _failure(exc) from exc
            if not line:
                return
            yield line

    def close(self) -> None:
        """Drop the connection (the rest of the body is not read)."""
        self._raw.close()
        self._connection.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _failure(exc: BaseException) -> Failure:
    if isinstance(exc, TimeoutError):
        return Failure("timeout", exc)
    return Failure("lost", exc)


def open_request(
    base_url: str,
    uds: Path | None,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    accept: str = "application/json",
    connect_timeout: float,
    read_timeout: float | None,
) -> Response:
    """Send one request and return its response once the status line and headers arrived.

    ``connect_timeout`` bounds connecting; ``read_timeout`` (``None``: no limit)
    bounds every later wait for the server. Raises :class:`Failure`.
    """
    connection = _connection(base_url, uds, connect_timeout)
    try:
        connection.connect()
    except OSError as exc:  # refused, no such socket, or the connect timeout
        connection.close()
        raise Failure("connect", exc) from exc
    headers = {"accept": accept, "connection": "close"}
    body = None
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers["content-type"] = "application/json"
    try:
        assert connection.sock is not None  # connected above
        connection.sock.settimeout(read_timeout)
        connection.request(method, path, body=body, headers=headers)
        return Response(connection, connection.getresponse())
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise _failure(exc) from exc
    except BaseException:
        connection.close()
        raise
