"""Where the server is: endpoint resolution and the errors for an unreachable one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from cleanroom.client._auth import Credentials, resolve_credentials
from cleanroom.client._config import load_client_config
from cleanroom.errors import InvalidRequest, ServerUnavailable
from cleanroom.loopback import is_loopback
from cleanroom.paths import default_socket_path

__all__ = [
    "DEFAULT_TIMEOUT",
    "HOST_ENV",
    "Endpoint",
    "EndpointSettings",
    "client_endpoint",
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
    credentials: Credentials = field(default_factory=Credentials)
    """The token and TLS trust (see :mod:`cleanroom.client._auth`)."""

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (``https://`` endpoints only)."""
        return self.base_url.startswith("https://")

    def headers(self) -> dict[str, str]:
        """Headers every request carries: the token's, for a TCP server only."""
        return {} if self.uds is not None else self.credentials.headers()

    def host_port(self) -> tuple[str, int]:
        """The TCP server's host and port."""
        parts = urlsplit(self.base_url)
        return parts.hostname or "", parts.port or (443 if self.tls else 80)


class EndpointSettings:
    """What both clients are made with: where the server is, the token and TLS
    trust (see :func:`client_endpoint`), and how long a plain call may take."""

    def __init__(
        self,
        host: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        token_file: Path | str | None = None,
        tls_fingerprint: str | None = None,
        tls_ca: Path | str | None = None,
    ) -> None:
        self.endpoint: Endpoint = client_endpoint(host, token, token_file, tls_fingerprint, tls_ca)
        self._timeout = timeout


def resolve_endpoint(host: str | None = None, credentials: Credentials | None = None) -> Endpoint:
    """Explicit ``host`` > ``$CLEANROOM_HOST`` > the default unix socket.

    Accepts ``unix:///abs/path``, ``tcp://HOST:PORT`` and ``http(s)://HOST:PORT``;
    ``tcp://`` is HTTPS when ``credentials`` pin a certificate or name a CA file.
    Raises ``InvalidRequest`` for anything else, and for a token that would go
    in clear text to a host other than loopback.
    """
    creds = credentials if credentials is not None else Credentials()
    chosen = host or os.environ.get(HOST_ENV) or None
    if chosen is None:
        path = default_socket_path()
        return Endpoint(
            url=f"unix://{path}",
            base_url="http://cleanroom",
            uds=path,
            is_default=True,
            credentials=creds,
        )
    if chosen.startswith("unix://"):
        path = Path(chosen[len("unix://") :])
        if not path.is_absolute():
            raise InvalidRequest(f"unix socket path must be absolute: {chosen!r}")
        return Endpoint(url=chosen, base_url="http://cleanroom", uds=path, credentials=creds)
    if chosen.startswith("tcp://"):
        scheme = "https://" if creds.pins_tls else "http://"
        base = scheme + chosen[len("tcp://") :].rstrip("/")
    elif chosen.startswith(("http://", "https://")):
        base = chosen.rstrip("/")
    else:
        raise InvalidRequest(
            f"unsupported server address {chosen!r} "
            "(use unix:///path, tcp://HOST:PORT or http(s)://HOST:PORT)"
        )
    endpoint = Endpoint(url=chosen, base_url=base, credentials=creds)
    if creds.token is not None and not endpoint.tls and not is_loopback(endpoint.host_port()[0]):
        raise InvalidRequest(
            f"refusing to send an API token in clear text to {chosen} "
            "(use https://, or pin the server's certificate with --tls-fingerprint)",
            details={"address": chosen},
        )
    return endpoint


def client_endpoint(
    host: str | None,
    token: str | None = None,
    token_file: Path | str | None = None,
    tls_fingerprint: str | None = None,
    tls_ca: Path | str | None = None,
) -> Endpoint:
    """The endpoint a client talks to, with its credentials (see ``_auth``).

    ``host``, else ``$CLEANROOM_HOST``, else the client configuration file's
    ``host`` (see ``_config``), else the default socket. A unix socket takes no
    credentials, so none are read for it (a token file in the environment, or
    a client configuration file, cannot break local use when a socket is named).
    """
    chosen = host or os.environ.get(HOST_ENV) or None
    file = None
    if chosen is None:
        file = load_client_config()
        chosen = file.host
    endpoint = resolve_endpoint(chosen)
    if endpoint.uds is not None:
        return endpoint
    file = file if file is not None else load_client_config()
    credentials = resolve_credentials(token, token_file, tls_fingerprint, tls_ca, defaults=file)
    return resolve_endpoint(chosen, credentials)


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
