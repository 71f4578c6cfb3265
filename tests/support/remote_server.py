"""A real server on a TCP listener, as a remote client reaches it.

One helper owns how a TCP server is started and what a client needs to talk
to it (its URL, and the environment a ``cleanroom`` CLI process needs), so
that authentication can be added in one place.

Every TCP listener wants an API token, and a non-loopback one TLS: the helper
makes a token (and, off loopback, a self-signed certificate), puts both in
``client_env`` (``CLEANROOM_TOKEN``, ``CLEANROOM_TLS_FINGERPRINT``), sets
them in this process's environment for the block (so in-process clients
given only ``url`` find them), and gives ``headers`` for raw HTTP clients.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.server import ListenAddress, ServeSecurity, needs_tls, self_signed
from cleanroom.service.api import ServiceAPI
from cleanroom.testing import ServerThread
from cleanroom.tokens import TokenStore


@dataclass(frozen=True)
class RemoteServer:
    """A running TCP server: ``url`` (``tcp://HOST:PORT``) and ``client_env``
    (variables a client process needs besides ``--host``)."""

    url: str
    client_env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    """What a raw HTTP client sends (the ``Authorization`` header)."""
    base_url: str = ""
    """``http://`` or ``https://HOST:PORT`` for a raw HTTP client."""


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def tcp_server(service: ServiceAPI, host: str = "127.0.0.1") -> Iterator[RemoteServer]:
    """Serve ``service`` on ``tcp://host:<free port>`` (non-loopback hosts allowed, over
    TLS) until the block ends."""
    address = ListenAddress(scheme="tcp", host=host, port=0)
    token = TokenStore().create(f"test-{os.urandom(4).hex()}")
    env = {"CLEANROOM_TOKEN": token}
    security = ServeSecurity()
    certs = Path(tempfile.mkdtemp(prefix="crt-tls-"))
    try:
        if needs_tls([address], tls_on_loopback=False):
            tls = self_signed(hosts=[host], directory=certs)
            security = ServeSecurity(tls=tls)
            env["CLEANROOM_TLS_FINGERPRINT"] = tls.fingerprint
        with (
            ServerThread(service, address, allow_remote=True, security=security) as running,
            _environment(env),
        ):
            url = running.url
            plain = url.replace("https://", "tcp://")
            base = url if url.startswith("https://") else "http://" + url.removeprefix("tcp://")
            yield RemoteServer(
                plain, env, headers={"Authorization": f"Bearer {token}"}, base_url=base
            )
    finally:
        shutil.rmtree(certs, ignore_errors=True)
