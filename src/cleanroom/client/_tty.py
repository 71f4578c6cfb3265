"""An interactive run over the server's ``/v1/exec/tty`` WebSocket (blocking).

See ``cleanroom.server.terminal_ws`` for the protocol and :mod:`._terminal`
for what this shares with the asyncio session. The session is used from two
threads at most: one reading events (:meth:`TerminalSession.events`), one
sending input and controls (sending is thread-safe in ``websockets``).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect, unix_connect

from cleanroom.client._calls import error_from_body
from cleanroom.client._closing import Closing
from cleanroom.client._endpoint import Endpoint, connection_error, precheck
from cleanroom.client._terminal import (
    EOF_MESSAGE,
    TTY_PATH,
    TerminalEvent,
    TerminalExit,
    TerminalOutput,
    TerminalState,
    TtyCall,
    resize_message,
    signal_message,
    ws_url,
)

__all__ = [
    "TerminalExit",
    "TerminalOutput",
    "TerminalSession",
    "connect_errors",
    "open_terminal",
    "tls_context",
]


class TerminalSession(TerminalState[ClientConnection], Closing):
    """One interactive run: send keystrokes and controls, read output until the exit."""

    def send(self, data: bytes) -> None:
        """Type ``data`` into the terminal."""
        if data:
            self._safe(data)

    def resize(self, rows: int, cols: int) -> None:
        """Change the terminal's window size."""
        self._safe(resize_message(rows, cols))

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the terminal's foreground process group."""
        self._safe(signal_message(signum))

    def eof(self) -> None:
        """No more input."""
        self._safe(EOF_MESSAGE)

    def _safe(self, message: str | bytes) -> None:
        # A closed connection means the run ended: the reader reports how.
        with contextlib.suppress(ConnectionClosed, OSError):
            self._ws.send(message)

    def events(self) -> Iterator[TerminalEvent]:
        """Output as it comes, then the exit; raises the run's error."""
        with self._reading():
            for message in self._ws:
                event = self._decoder.event(message)
                if event is not None:
                    yield event
                    if isinstance(event, TerminalExit):
                        return

    def close(self) -> None:
        """Close the connection (a run still going is cancelled by the server)."""
        self._ws.close()


@contextlib.contextmanager
def connect_errors(endpoint: Endpoint) -> Iterator[None]:
    """Translate what opening the WebSocket raises: the server's refusal (e.g.
    unauthenticated) as its error, an untrusted certificate as ``ServerNotTrusted``,
    anything else as ``ServerUnavailable``."""
    try:
        yield
    except InvalidStatus as exc:  # refused before the upgrade
        response = exc.response
        raise error_from_body(response.status_code, bytes(response.body or b"")) from exc
    except ssl.SSLCertVerificationError as exc:
        from cleanroom.client._tls import not_trusted  # noqa: PLC0415

        raise not_trusted(endpoint.url, exc.verify_message or str(exc)) from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise connection_error(endpoint, "connect", str(exc)) from exc


def tls_context(endpoint: Endpoint, timeout: float) -> ssl.SSLContext | None:
    """The TLS context trusting the endpoint's pin or CA (``None`` without TLS).

    Blocks: a pinned certificate is fetched and checked first.
    """
    if not endpoint.tls:
        return None
    from cleanroom.client._tls import anchored_context  # noqa: PLC0415

    host, port = endpoint.host_port()
    with connect_errors(endpoint):
        return anchored_context(host, port, endpoint.credentials, timeout, endpoint.url)


def open_terminal(endpoint: Endpoint, tty: TtyCall, timeout: float) -> TerminalSession:
    """Start ``tty``'s exec on its terminal; raises ``ServerUnavailable``."""
    precheck(endpoint)
    start = tty.start_message()
    with connect_errors(endpoint):
        if endpoint.uds is not None:
            ws = unix_connect(str(endpoint.uds), "ws://cleanroom" + TTY_PATH, open_timeout=timeout)
        else:
            ws = connect(
                ws_url(endpoint),
                open_timeout=timeout,
                ssl=tls_context(endpoint, timeout),
                additional_headers=endpoint.headers(),
            )
    session = TerminalSession(ws, endpoint)
    session._safe(start)
    return session
