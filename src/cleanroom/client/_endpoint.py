"""Where the server is: endpoint resolution and the errors for an unreachable one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cleanroom.errors import InvalidRequest, ServerUnavailable
from cleanroom.paths import default_socket_path

__all__ = [
    "DEFAULT_TIMEOUT",
    "HOST_ENV",
    "Endpoint",
    "connection_error",
    "precheck",
    "resolve_endpoint",
    "run_record_path",
]

HOST_ENV = "CLEANROOM_HOST"
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Endpoint:
    """A resolved server address: the HTTP base URL, and the unix socket if any."""

    url: str
    """As given (``unix:///path``, ``tcp://h:p`` or ``http://h:p``)."""
    base_url: str
    uds: Path | None = None
    is_default: bool = False
    """True when no host was given anywhere (the default local socket)."""

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (``https://`` endpoints only)."""
        return self.base_url.startswith("https://")


def resolve_endpoint(host: str | None = None) -> Endpoint:
    """Explicit ``host`` > ``$CLEANROOM_HOST`` > the default unix socket.

    Accepts ``unix:///abs/path``, ``tcp://HOST:PORT`` and ``http(s)://HOST:PORT``;
    raises ``InvalidRequest`` for anything else.
    """
    chosen = host or os.environ.get(HOST_ENV) or None
    if chosen is None:
        path = default_socket_path()
        return Endpoint(
            url=f"unix://{path}", base_url="http://cleanroom", uds=path, is_default=True
        )
    if chosen.startswith("unix://"):
        path = Path(chosen[len("unix://") :])
        if not path.is_absolute():
            raise InvalidRequest(f"unix socket path must be absolute: {chosen!r}")
        return Endpoint(url=chosen, base_url="http://cleanroom", uds=path)
    if chosen.startswith("tcp://"):
        return Endpoint(url=chosen, base_url="http://" + chosen[len("tcp://") :].rstrip("/"))
    if chosen.startswith(("http://", "https://")):
        return Endpoint(url=chosen, base_url=chosen.rstrip("/"))
    raise InvalidRequest(
        f"unsupported server address {chosen!r} (use unix:///path, tcp://HOST:PORT or http://...)"
    )


def run_record_path(run_id: str) -> str:
    """The URL path of a run's record (the id quoted as one path segment)."""
    return f"/v1/runs/{quote(run_id, safe='')}"


def connection_error(endpoint: Endpoint, kind: str, cause: str) -> ServerUnavailable:
    """The error for an unreachable (``kind`` ``connect``), silent (``timeout``) or
    vanished (anything else) server; ``cause`` says what the transport saw."""
    if kind == "connect":
        message = f"no cleanroom server answers at {endpoint.url}"
    elif kind == "timeout":
        message = f"the server at {endpoint.url} did not answer in time"
    else:
        message = f"the connection to the server at {endpoint.url} was lost"
    return ServerUnavailable(
        message,
        details={
            "address": endpoint.url,
            "cause": cause,
            "hint": "start one with `cleanroom serve`",
        },
    )


def precheck(endpoint: Endpoint) -> None:
    """Fail fast (``ServerUnavailable``) when the endpoint's unix socket does not exist.

    Besides being quicker, this avoids a socket leak in httpcore (the asyncio
    client's transport), which does not close its unix socket when connecting fails.
    """
    if endpoint.uds is not None and not endpoint.uds.exists():
        raise connection_error(endpoint, "connect", f"{endpoint.uds} does not exist")
