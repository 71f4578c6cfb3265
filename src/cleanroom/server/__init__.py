"""The HTTP server: the API app over a service, its listeners, and the process runner."""

from __future__ import annotations

from cleanroom.events import NDJSON, Utf8Chunker
from cleanroom.server.app import create_app
from cleanroom.server.auth import Authenticator, BearerTokens, Gate, OwnerOnly
from cleanroom.server.listen import (
    LISTENER_KINDS,
    BoundListener,
    ListenAddress,
    ListenerKind,
    bind,
    parse_listen,
)
from cleanroom.server.runner import CleanroomServer, configure_logging, serve_forever
from cleanroom.server.security import ServeSecurity, needs_tls
from cleanroom.server.tls import TlsFiles, certificate_fingerprint, load_tls, self_signed

__all__ = [
    "LISTENER_KINDS",
    "NDJSON",
    "Authenticator",
    "BearerTokens",
    "BoundListener",
    "CleanroomServer",
    "Gate",
    "ListenAddress",
    "ListenerKind",
    "OwnerOnly",
    "ServeSecurity",
    "TlsFiles",
    "Utf8Chunker",
    "bind",
    "certificate_fingerprint",
    "configure_logging",
    "create_app",
    "load_tls",
    "needs_tls",
    "parse_listen",
    "self_signed",
    "serve_forever",
]
