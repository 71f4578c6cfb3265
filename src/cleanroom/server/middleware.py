"""ASGI middleware: a request body size limit and a structured access log."""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cleanroom.errors import CleanroomError, InvalidRequest

__all__ = ["DEFAULT_BODY_LIMIT", "AccessLog", "BodyLimit"]

DEFAULT_BODY_LIMIT = 1024 * 1024
_log = structlog.get_logger("cleanroom.server")


class BodyLimit:
    """Rejects request bodies over ``limit`` bytes with 413 ``invalid_request``.

    The body is read here (it is small by construction) and replayed to the
    app; later ``receive`` calls go to the server, so the app still sees the
    client's disconnect. ``POST`` requests to a path in ``streamed`` pass
    untouched: their route reads its (large) body as a stream under its own caps.
    """

    def __init__(
        self, app: ASGIApp, limit: int = DEFAULT_BODY_LIMIT, streamed: frozenset[str] = frozenset()
    ) -> None:
        self._app = app
        self._limit = limit
        self._streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Buffer and check the body, then call the app."""
        if scope["type"] != "http" or (
            scope.get("method") == "POST" and scope.get("path") in self._streamed
        ):
            await self._app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self._limit:
            await self._reject(send, declared)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                await self._reject(send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self._app(scope, replay, send)

    async def _reject(self, send: Send, size: int) -> None:
        exc = InvalidRequest(
            f"request body too large ({size} bytes; the limit is {self._limit})",
            details={"limit_bytes": self._limit, "size_bytes": size},
        )
        body = json.dumps(exc.to_dict()).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class AccessLog:
    """Logs one structured line per request: method, path, status, duration.

    Also the last resort for bugs: an exception escaping the app becomes a
    logged 500 ``internal_error`` body (if no response has started yet).
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the app and log when the response has finished (or failed)."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        start = time.monotonic()
        status: dict[str, Any] = {"status": None}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["status"] = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, watch)
        except Exception as exc:  # noqa: BLE001 - last resort: a bug must not leak a traceback
            _log.error("unhandled_error", path=scope.get("path"), error=repr(exc), exc_info=exc)
            if status["status"] is None:
                status["status"] = 500
                body = json.dumps(CleanroomError("internal server error").to_dict()).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            _log.info(
                "request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status["status"],
                duration_ms=round((time.monotonic() - start) * 1000, 1),
            )
