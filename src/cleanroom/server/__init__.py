"""The HTTP server: the API app over a service, its listeners, and the process runner."""

from __future__ import annotations

from cleanroom.events import NDJSON, Utf8Chunker
from cleanroom.server.app import create_app
from cleanroom.server.listen import BoundListener, ListenAddress, bind, parse_listen
from cleanroom.server.runner import CleanroomServer, configure_logging, serve_forever

__all__ = [
    "NDJSON",
    "BoundListener",
    "CleanroomServer",
    "ListenAddress",
    "Utf8Chunker",
    "bind",
    "configure_logging",
    "create_app",
    "parse_listen",
    "serve_forever",
]
