"""Where a request came in: the owner-only unix socket, or a TCP listener."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["over_unix_socket"]


def over_unix_socket(scope: Mapping[str, Any]) -> bool:
    """Whether the ASGI connection ``scope`` arrived on a unix socket.

    uvicorn reports a unix socket's local address as ``(path, None)`` and a
    TCP one as ``(host, port)``; anything else (no address at all) counts as
    remote, so a caller is trusted with server paths only when it is known
    to be on the owner-only socket.
    """
    server = scope.get("server")
    return isinstance(server, tuple | list) and len(server) == 2 and server[1] is None
