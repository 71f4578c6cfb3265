"""A real server on a TCP listener, as a remote client reaches it.

One helper owns how a TCP server is started and what a client needs to talk
to it (its URL, and the environment a ``cleanroom`` CLI process needs), so
that authentication can be added in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from cleanroom.server import ListenAddress
from cleanroom.service.api import ServiceAPI
from cleanroom.testing import ServerThread


@dataclass(frozen=True)
class RemoteServer:
    """A running TCP server: ``url`` (``tcp://HOST:PORT``) and ``client_env``
    (variables a client process needs besides ``--host``)."""

    url: str
    client_env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def tcp_server(service: ServiceAPI, host: str = "127.0.0.1") -> Iterator[RemoteServer]:
    """Serve ``service`` on ``tcp://host:<free port>`` (non-loopback hosts allowed)
    until the block ends."""
    address = ListenAddress(scheme="tcp", host=host, port=0)
    with ServerThread(service, address, allow_remote=True) as running:
        yield RemoteServer(running.url)
