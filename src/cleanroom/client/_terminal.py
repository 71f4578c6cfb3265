"""The terminal protocol as both clients speak it (``/v1/exec/tty``; no I/O here).

See :mod:`cleanroom.server.terminal_ws` for the protocol. What is the same
for the blocking session (:mod:`._tty`) and the asyncio one
(:mod:`._tty_async`) lives here: the call builder, the messages a client
sends, and the decoding of what the server sends. The sessions add only
their transport.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from cleanroom.client._calls import Call, error_from_body, exec_call, json_object
from cleanroom.client._endpoint import Endpoint, connection_error
from cleanroom.models import ExecRequest, LaunchOptions, RunResult, from_dict, to_dict

__all__ = [
    "EOF_MESSAGE",
    "TTY_PATH",
    "TerminalDecoder",
    "TerminalEvent",
    "TerminalExit",
    "TerminalOutput",
    "TerminalState",
    "TtyCall",
    "exec_tty",
    "resize_message",
    "signal_message",
    "ws_url",
]

TTY_PATH = "/v1/exec/tty"
EOF_MESSAGE = json.dumps({"type": "eof"})


@dataclass(frozen=True)
class TerminalOutput:
    """Bytes the terminal showed."""

    data: bytes


@dataclass(frozen=True)
class TerminalExit:
    """The run's result (the last event)."""

    result: RunResult


TerminalEvent = TerminalOutput | TerminalExit


@dataclass(frozen=True)
class TtyCall:
    """An interactive exec: the exec call (its workspace uploaded by the client when
    the server is remote) and the terminal's size."""

    call: Call[RunResult]
    rows: int
    cols: int

    def start_message(self) -> str:
        """The first message: the exec request and the window size."""
        assert self.call.body is not None
        request = from_dict(ExecRequest, self.call.body)  # the wire model's own checks
        body = to_dict(request, drop_none=True)
        return json.dumps({"request": body, "rows": self.rows, "cols": self.cols})


def exec_tty(
    cwd: Path | str,
    command: Sequence[str],
    *,
    rows: int,
    cols: int,
    backend: str | None = None,
    options: LaunchOptions | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    artifacts: Sequence[str] | None = None,
) -> TtyCall:
    """Launch, run ``command`` on a ``rows`` x ``cols`` pseudo-terminal, terminate.

    The session takes keystrokes (``send``), ``resize``, ``signal`` and
    ``eof``, and yields the terminal's output then the result (``events``).
    """
    call = exec_call(
        cwd, command, backend=backend, options=options, timeout=timeout, env=env,
        artifacts=artifacts,
    )  # fmt: skip
    return TtyCall(call, rows, cols)


def resize_message(rows: int, cols: int) -> str:
    """Change the terminal's window size."""
    return json.dumps({"type": "resize", "rows": rows, "cols": cols})


def signal_message(signum: int) -> str:
    """Send ``signum`` to the terminal's foreground process group."""
    return json.dumps({"type": "signal", "signal": int(signum)})


def ws_url(endpoint: Endpoint) -> str:
    """The terminal's ``ws://`` or ``wss://`` URL on a TCP endpoint."""
    base = endpoint.base_url.replace("https://", "wss://").replace("http://", "ws://")
    return base + TTY_PATH


class TerminalDecoder:
    """The server's messages as events: binary ones are output, text ones JSON events."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.exited = False
        """Whether the exit has come (the last event a run sends)."""

    def event(self, message: str | bytes) -> TerminalEvent | None:
        """The event ``message`` carries (``None``: nothing for the caller); raises
        the run's error for an ``error`` event."""
        if isinstance(message, bytes):
            return TerminalOutput(message)
        event = _event(message)
        kind = event.get("type")
        if kind == "started":
            self.run_id = str(event.get("run_id"))
        elif kind == "exit":
            self.exited = True
            return TerminalExit(from_dict(RunResult, event.get("result")))
        elif kind == "error":
            body = json.dumps({"error": event.get("error")}).encode()
            raise error_from_body(500, body)
        return None


def _event(text: str) -> dict[str, Any]:
    return json_object(text, "a terminal event", "an unexpected terminal event")


W = TypeVar("W")


class TerminalState(Generic[W]):
    """What both terminal sessions (blocking and awaitable) hold: the WebSocket
    ``W``, the endpoint (for errors) and the event decoder."""

    def __init__(self, ws: W, endpoint: Endpoint) -> None:
        self._ws = ws
        self._endpoint = endpoint
        self._decoder = TerminalDecoder()

    @property
    def run_id(self) -> str | None:
        """The run's id, once the server has started it."""
        return self._decoder.run_id

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Around a session's loop reading events up to the exit: the connection
        lost on the way, or closed before the exit, is ``ServerUnavailable``."""
        from websockets.exceptions import ConnectionClosed  # noqa: PLC0415 -- on use

        try:
            yield
        except (ConnectionClosed, OSError) as exc:
            raise connection_error(self._endpoint, "lost", str(exc)) from exc
        if not self._decoder.exited:
            raise connection_error(self._endpoint, "lost", "the run ended without a result")
