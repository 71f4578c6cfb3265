"""Live NDJSON streaming of a run: one JSON object per line, output as it is produced.

Line types, in order: ``started`` (run_id, cleanroom_id, run_dir), any number of
``stdout``/``stderr`` (``data`` is text, or base64 with ``"encoding": "base64"``
when the bytes are not valid UTF-8), then exactly one ``exit`` (every run result
field) or ``error`` (``{"error": {code, message, details}}``).

An error that happens before the run starts (unknown context, bad policy) is
answered as an ordinary JSON error response with the error's HTTP status, so a
client sees the same status codes with or without streaming. A client that
disconnects mid-stream cancels the run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cleanroom.errors import CleanroomError
from cleanroom.server.models import RunResponse
from cleanroom.service.types import EventSink, RunEvent, RunOutput, RunResult, RunStarted

__all__ = ["NDJSON", "RunStreamResponse", "Utf8Chunker", "error_response_bytes"]

NDJSON = "application/x-ndjson"
_MAX_UTF8_TAIL = 3
_log = structlog.get_logger("cleanroom.server")

RunStarter = Callable[[EventSink], Coroutine[Any, Any, RunResult]]


class Utf8Chunker:
    """Turns one output stream's byte chunks into ``(data, encoding)`` pairs.

    A UTF-8 sequence split across chunk boundaries is held back (at most 3
    bytes) until the next chunk, so it does not force base64 on either half.
    Chunks that are not valid UTF-8 become base64 (``encoding="base64"``).
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> tuple[str, str | None] | None:
        """Encode ``data`` (plus any held-back tail); ``None`` when nothing is ready."""
        buf = self._pending + data
        cut = len(buf) - _incomplete_tail(buf)
        head, self._pending = buf[:cut], buf[cut:]
        return _encode(head) if head else None

    def flush(self) -> tuple[str, str | None] | None:
        """Whatever is still held back (an incomplete sequence: always base64)."""
        rest, self._pending = self._pending, b""
        return _encode(rest) if rest else None


def _incomplete_tail(buf: bytes) -> int:
    """Length of a trailing UTF-8 sequence that a following chunk could complete."""
    for back in range(1, min(_MAX_UTF8_TAIL, len(buf)) + 1):
        byte = buf[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        if byte >= 0xF0:
            need = 4
        elif byte >= 0xE0:
            need = 3
        elif byte >= 0xC0:
            need = 2
        else:
            return 0
        return back if need > back else 0
    return 0


def _encode(data: bytes) -> tuple[str, str | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


def error_response_bytes(exc: CleanroomError) -> bytes:
    """The JSON error body for ``exc``."""
    return json.dumps(exc.to_dict()).encode("utf-8")


def as_cleanroom_error(exc: BaseException) -> CleanroomError:
    """``exc`` itself if it is a cleanroom error, else a generic internal error (logged)."""
    if isinstance(exc, CleanroomError):
        return exc
    _log.error("unexpected_error", error=repr(exc), exc_info=exc)
    return CleanroomError("internal server error")


class RunStreamResponse(Response):
    """An ASGI response that runs ``start(on_event)`` and streams its events as NDJSON."""

    def __init__(self, start: RunStarter) -> None:
        super().__init__(media_type=NDJSON)
        self._start = start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the stream; cancels the run when the client goes away."""
        queue: asyncio.Queue[RunEvent] = asyncio.Queue()

        async def sink(event: RunEvent) -> None:
            await queue.put(event)

        run = asyncio.create_task(self._start(sink))
        gone = asyncio.create_task(_wait_disconnect(receive))
        try:
            await self._serve(queue, run, gone, send)
        finally:
            for task in (run, gone):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _serve(
        self,
        queue: asyncio.Queue[RunEvent],
        run: asyncio.Task[RunResult],
        gone: asyncio.Task[None],
        send: Send,
    ) -> None:
        first = await _next(queue, run, gone)
        if gone.done():
            _log.info("stream_client_gone", phase="before_start")
            return
        if first is None and run.exception() is not None:
            exc = as_cleanroom_error(run.exception())  # type: ignore[arg-type]
            body = error_response_bytes(exc)
            await send(
                {
                    "type": "http.response.start",
                    "status": exc.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", NDJSON.encode()), (b"cache-control", b"no-store")],
            }
        )
        chunkers = {"stdout": Utf8Chunker(), "stderr": Utf8Chunker()}
        event = first
        while True:
            if event is not None:
                await _send_event(send, event, chunkers)
            elif gone.done():
                _log.info("stream_client_gone", phase="running")
                return  # the finally in __call__ cancels the run
            else:  # the run finished and its queued events are drained
                break
            event = await _next(queue, run, gone)
        for stream, chunker in chunkers.items():
            tail = chunker.flush()
            if tail is not None:
                await _send_body(send, _output_line(stream, tail))
        failure = run.exception()
        if failure is None:
            final = {"type": "exit", **RunResponse.of(run.result()).model_dump(mode="json")}
        else:
            final = {"type": "error", **as_cleanroom_error(failure).to_dict()}
        await _send_body(send, _line(final))
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _next(
    queue: asyncio.Queue[RunEvent], run: asyncio.Task[RunResult], gone: asyncio.Task[None]
) -> RunEvent | None:
    """The next queued event; ``None`` once the run is done and drained, or the client left."""
    while True:
        if not queue.empty():
            return queue.get_nowait()
        if run.done() or gone.done():
            return None
        getter = asyncio.create_task(queue.get())
        await asyncio.wait({getter, run, gone}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        await asyncio.wait({getter})
        if not getter.cancelled():  # it got an item just before the cancel landed
            return getter.result()


async def _send_event(send: Send, event: RunEvent, chunkers: dict[str, Utf8Chunker]) -> None:
    if isinstance(event, RunStarted):
        line = {
            "type": "started",
            "run_id": event.run_id,
            "cleanroom_id": event.cleanroom_id,
            "run_dir": str(event.run_dir),
        }
        await _send_body(send, _line(line))
    elif isinstance(event, RunOutput):
        encoded = chunkers[event.stream].feed(event.data)
        if encoded is not None:
            await _send_body(send, _output_line(event.stream, encoded))
    # RunExit is not forwarded: the final line is built from the run's return value.


def _output_line(stream: str, encoded: tuple[str, str | None]) -> bytes:
    data, encoding = encoded
    obj: dict[str, Any] = {"type": stream, "data": data}
    if encoding is not None:
        obj["encoding"] = encoding
    return _line(obj)


async def _send_body(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})
