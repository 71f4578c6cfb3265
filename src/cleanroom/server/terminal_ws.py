"""``/v1/exec/tty``: an interactive run (launch, run on a pseudo-terminal, terminate)
over a WebSocket.

Protocol (one run per connection):

- client -> server, first: a text message ``{"request": <ExecRequest>, "rows": R,
  "cols": C}``; then binary messages are typed into the terminal, and text
  messages control it: ``{"type": "resize", "rows": R, "cols": C}``,
  ``{"type": "signal", "signal": N}`` (to the foreground process group) and
  ``{"type": "eof"}`` (no more input);
- server -> client: binary messages are the terminal's output; text messages
  are the run's events ``{"type": "started", ...}``, then ``{"type": "exit",
  "result": <RunResult>}`` or ``{"type": "error", "error": {...}}``; then the
  server closes the connection.

Closing the connection early cancels the run. Malformed messages end the run
with ``invalid_request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import structlog
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from cleanroom.errors import CleanroomError, InvalidRequest
from cleanroom.models import ExecRequest, RunResult, from_dict, to_dict
from cleanroom.server.origin import over_unix_socket
from cleanroom.server.streaming import as_cleanroom_error
from cleanroom.server.tasks import cancel_and_wait
from cleanroom.service.api import ServiceAPI
from cleanroom.service.terminal import Terminal
from cleanroom.service.types import RunEvent, RunOptions, RunOutput, RunStarted

__all__ = ["TTY_PATH", "install_terminal"]

TTY_PATH = "/v1/exec/tty"
_MAX_MESSAGE = 1 << 20
_log = structlog.get_logger("cleanroom.server")


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if type(value) is not int:
        raise InvalidRequest(f"{key} must be an integer")
    return value


def _start(text: str) -> tuple[ExecRequest, int, int]:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest("the first message must be a JSON object") from exc
    if not isinstance(obj, dict) or set(obj) != {"request", "rows", "cols"}:
        raise InvalidRequest("the first message is {request, rows, cols}")
    return from_dict(ExecRequest, obj["request"]), _int(obj, "rows"), _int(obj, "cols")


async def _control(terminal: Terminal, text: str) -> None:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest("control messages are JSON objects") from exc
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "resize" and set(obj) == {"type", "rows", "cols"}:
        await terminal.resize(_int(obj, "rows"), _int(obj, "cols"))
    elif kind == "signal" and set(obj) == {"type", "signal"}:
        await terminal.signal(_int(obj, "signal"))
    elif kind == "eof" and set(obj) == {"type"}:
        await terminal.end()
    else:
        raise InvalidRequest("unknown control message")


async def _pump_input(ws: WebSocket, terminal: Terminal) -> None:
    """Client messages into the terminal, until the client closes (then EOF)."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect()
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                await terminal.feed(data)
            elif text is not None:
                await _control(terminal, text)
    finally:
        with contextlib.suppress(Exception):
            await terminal.end()


def install_terminal(app: FastAPI, service: ServiceAPI) -> None:
    """Add the ``/v1/exec/tty`` WebSocket route over ``service``."""

    @app.websocket(TTY_PATH)
    async def exec_tty(ws: WebSocket) -> None:
        await ws.accept()
        try:
            request, rows, cols = _start(await ws.receive_text())
            terminal = Terminal(rows, cols)
        except (CleanroomError, WebSocketDisconnect, KeyError, RuntimeError) as exc:
            await _finish(ws, exc if isinstance(exc, CleanroomError) else None)
            return

        async def on_event(event: RunEvent) -> None:
            if isinstance(event, RunOutput):
                await ws.send_bytes(event.data)
            elif isinstance(event, RunStarted):
                await ws.send_text(json.dumps({"type": "started", "run_id": event.run_id,
                                               "cleanroom_id": event.cleanroom_id,
                                               "run_dir": str(event.run_dir)}))  # fmt: skip

        run = asyncio.ensure_future(
            service.exec(
                request.cwd,
                request.command,
                RunOptions.of(request, terminal),
                on_event=on_event,
                backend=request.backend,
                options=request.options,
                workspace_id=request.workspace_id,
                local=over_unix_socket(ws.scope),
            )
        )
        pump = asyncio.ensure_future(_pump_input(ws, terminal))
        await asyncio.wait({run, pump}, return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            if isinstance(pump.exception(), WebSocketDisconnect):
                run.cancel()  # the client is gone
            elif pump.exception() is not None:
                run.cancel()
        error: CleanroomError | None = None
        result: RunResult | None = None
        try:
            result = await run
        except asyncio.CancelledError:
            pump_exc = pump.exception() if pump.done() and not pump.cancelled() else None
            error = pump_exc if isinstance(pump_exc, CleanroomError) else None
            if error is None:
                return  # the client went away: nobody to tell
        except CleanroomError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 -- reported as internal_error
            error = as_cleanroom_error(exc)
        finally:
            await cancel_and_wait(pump)
        if result is not None:
            with contextlib.suppress(Exception):
                await ws.send_text(json.dumps({"type": "exit", "result": to_dict(result)}))
        await _finish(ws, error)


async def _finish(ws: WebSocket, error: CleanroomError | None) -> None:
    with contextlib.suppress(Exception):
        if error is not None:
            await ws.send_text(json.dumps({"type": "error", **error.to_dict()}))
        await ws.close()
