"""An interactive run over the server's ``/v1/exec/tty`` WebSocket (blocking).

See ``cleanroom.server.terminal_ws`` for the protocol. The session is used
from two threads at most: one reading events (:meth:`TerminalSession.events`),
one sending input and controls (sending is thread-safe in ``websockets``).
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect, unix_connect

from cleanroom.client._calls import error_from_body, json_object
from cleanroom.client._closing import Closing
from cleanroom.client._endpoint import Endpoint, connection_error, precheck
from cleanroom.models import ExecRequest, RunResult, from_dict, to_dict

__all__ = ["TerminalExit", "TerminalOutput", "TerminalSession", "open_terminal"]

TTY_PATH = "/v1/exec/tty"


@dataclass(frozen=True)
class TerminalOutput:
    """Bytes the terminal showed."""

    data: bytes


@dataclass(frozen=True)
class TerminalExit:
    """The run's result (the last event)."""

    result: RunResult


class TerminalSession(Closing):
    """One interactive run: send keystrokes and controls, read output until the exit."""

    def __init__(self, ws: ClientConnection, endpoint: Endpoint) -> None:
        self._ws = ws
        self._endpoint = endpoint
        self.run_id: str | None = None

    def send(self, data: bytes) -> None:
        """Type ``data`` into the terminal."""
        if data:
            self._safe(data)

    def resize(self, rows: int, cols: int) -> None:
        """Change the terminal's window size."""
        self._safe(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the terminal's foreground process group."""
        self._safe(json.dumps({"type": "signal", "signal": int(signum)}))

    def eof(self) -> None:
        """No more input."""
        self._safe(json.dumps({"type": "eof"}))

    def _safe(self, message: str | bytes) -> None:
        # A closed connection means the run ended: the reader reports how.
        with contextlib.suppress(ConnectionClosed, OSError):
            self._ws.send(message)

    def events(self) -> Iterator[TerminalOutput | TerminalExit]:
        """Output as it comes, then the exit; raises the run's error."""
        try:
            for message in self._ws:
                if isinstance(message, bytes):
                    yield TerminalOutput(message)
                    continue
                event = _event(message)
                kind = event.get("type")
                if kind == "started":
                    self.run_id = str(event.get("run_id"))
                elif kind == "exit":
                    yield TerminalExit(from_dict(RunResult, event.get("result")))
                    return
                elif kind == "error":
                    body = json.dumps({"error": event.get("error")}).encode()
                    raise error_from_body(500, body)
        except (ConnectionClosed, OSError) as exc:
            raise connection_error(self._endpoint, "lost", str(exc)) from exc
        raise connection_error(self._endpoint, "lost", "the run ended without a result")

    def close(self) -> None:
        """Close the connection (a run still going is cancelled by the server)."""
        self._ws.close()


def _event(text: str) -> dict[str, Any]:
    return json_object(text, "a terminal event", "an unexpected terminal event")


def open_terminal(
    endpoint: Endpoint, request: ExecRequest, rows: int, cols: int, timeout: float
) -> TerminalSession:
    """Start ``request`` on a ``rows`` x ``cols`` terminal; raises ``ServerUnavailable``."""
    precheck(endpoint)
    start = json.dumps({"request": to_dict(request, drop_none=True), "rows": rows, "cols": cols})
    try:
        if endpoint.uds is not None:
            ws = unix_connect(str(endpoint.uds), "ws://cleanroom" + TTY_PATH, open_timeout=timeout)
        else:
            base = endpoint.base_url.replace("https://", "wss://").replace("http://", "ws://")
            context = None
            if endpoint.tls:
                from cleanroom.client._tls import anchored_context  # noqa: PLC0415

                host, port = endpoint.host_port()
                context = anchored_context(host, port, endpoint.credentials, timeout, endpoint.url)
            ws = connect(
                base + TTY_PATH,
                open_timeout=timeout,
                ssl=context,
                additional_headers=endpoint.headers(),
            )
    except InvalidStatus as exc:  # refused before the upgrade, e.g. unauthenticated
        response = exc.response
        raise error_from_body(response.status_code, bytes(response.body or b"")) from exc
    except ssl.SSLCertVerificationError as exc:
        from cleanroom.client._tls import not_trusted  # noqa: PLC0415

        raise not_trusted(endpoint.url, exc.verify_message or str(exc)) from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise connection_error(endpoint, "connect", str(exc)) from exc
    session = TerminalSession(ws, endpoint)
    session._safe(start)
    return session
