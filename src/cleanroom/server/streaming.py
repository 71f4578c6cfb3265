"""Live NDJSON streaming of a run over ASGI (the line format is :mod:`cleanroom.events`).

An error that happens before the run starts (unknown context, bad policy) is
answered as an ordinary JSON error response with the error's HTTP status, so a
client sees the same status codes with or without streaming. A client that
disconnects mid-stream cancels the run.

Backpressure: the events wait in a bounded queue (:data:`STREAM_QUEUE_EVENTS`);
when a slow client fills it, the run's event sink waits, so the agent client
stops reading the guest's channel and the guest's writes block. Server memory
per stream stays at a few chunks whatever the guest writes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cleanroom.errors import CleanroomError
from cleanroom.events import NDJSON, Utf8Chunker, error_line, exit_line, output_line, started_line
from cleanroom.server.tasks import cancel_and_wait
from cleanroom.service.types import EventSink, RunEvent, RunOutput, RunResult, RunStarted

__all__ = ["STREAM_QUEUE_EVENTS", "RunStreamResponse", "as_cleanroom_error", "error_response_bytes"]

STREAM_QUEUE_EVENTS = 16
"""Events (each at most one 64 KiB output chunk) held for a stream's client at once."""

_log = structlog.get_logger("cleanroom.server")

RunStarter = Callable[[EventSink], Coroutine[Any, Any, RunResult]]


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
        queue: asyncio.Queue[RunEvent] = asyncio.Queue(STREAM_QUEUE_EVENTS)

        async def sink(event: RunEvent) -> None:
            await queue.put(event)

        run = asyncio.create_task(self._start(sink))
        gone = asyncio.create_task(_wait_disconnect(receive))
        try:
            await self._serve(queue, run, gone, send)
        finally:
            await cancel_and_wait(run, gone)

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
                        *((k.lower().encode(), v.encode()) for k, v in exc.http_headers().items()),
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
                await _send_body(send, output_line(stream, tail))
        failure = run.exception()
        if failure is None:
            final = exit_line(run.result())
        else:
            final = error_line(as_cleanroom_error(failure))
        await _send_body(send, final)
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
        await _send_body(send, started_line(event))
    elif isinstance(event, RunOutput):
        encoded = chunkers[event.stream].feed(event.data)
        if encoded is not None:
            await _send_body(send, output_line(event.stream, encoded))
    # RunExit is not forwarded: the final line is built from the run's return value.


async def _send_body(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})
