"""The ASGI middleware driven directly (no server), pinned where a mutation check
found it loose: the body cap at its limit and one past it for a declared length and
for a streamed body, how the body is replayed, the 413 and 500 responses, and the
access-log line."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from cleanroom.server import middleware
from cleanroom.server.middleware import DEFAULT_BODY_LIMIT, AccessLog, BodyLimit

Message = dict[str, Any]


class Exchange:
    """One HTTP exchange: what the client sends, what the app read and what it sent."""

    def __init__(self, messages: list[Message], headers: list[tuple[bytes, bytes]]) -> None:
        self.scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/x"}
        self.scope["headers"] = headers
        self.pending = list(messages)
        self.received = 0
        self.sent: list[Message] = []
        self.app_read: list[Message] | None = None

    async def receive(self) -> Message:
        self.received += 1
        return self.pending.pop(0)

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))


async def _limit(
    messages: list[Message],
    *,
    limit: int | None = 8,
    headers: list[tuple[bytes, bytes]] | None = None,
    reads: int = 1,
) -> Exchange:
    """Run BodyLimit(limit) over ``messages``; the app reads ``reads`` messages."""
    exchange = Exchange(messages, headers or [])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        exchange.app_read = [await receive() for _ in range(reads)]
        await send({"type": "http.response.start", "status": 204, "headers": []})

    guarded = BodyLimit(app) if limit is None else BodyLimit(app, limit=limit)
    await guarded(exchange.scope, exchange.receive, exchange.send)
    return exchange


def _request(body: bytes, more: bool = False) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


def _rejection(exchange: Exchange) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Status, headers and JSON error of a 413 the middleware sent itself."""
    assert exchange.app_read is None, "the app must not run for a refused body"
    start, body = exchange.sent
    assert start["type"] == "http.response.start"
    assert body["type"] == "http.response.body"
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    assert int(headers["content-length"]) == len(body["body"])
    return start["status"], headers, json.loads(body["body"])["error"]


async def test_a_body_of_exactly_the_limit_is_replayed_whole() -> None:
    exchange = await _limit([_request(b"1234", more=True), _request(b"5678")])
    assert exchange.app_read == [_request(b"12345678")]
    assert exchange.sent == [{"type": "http.response.start", "status": 204, "headers": []}]


async def test_a_streamed_body_one_past_the_limit_is_413_counting_every_chunk() -> None:
    exchange = await _limit(
        [_request(b"1234", more=True), _request(b"5678", more=True), _request(b"9")]
    )
    status, headers, error = _rejection(exchange)
    assert status == 413
    assert headers == {
        "content-type": "application/json",
        "content-length": headers["content-length"],
        "connection": "close",
    }
    assert error == {
        "code": "invalid_request",
        "message": "request body too large (9 bytes; the limit is 8)",
        "details": {"limit_bytes": 8, "size_bytes": 9},
    }
    assert exchange.received == 3


@pytest.mark.parametrize("declared", [8, 0])
async def test_a_declared_length_within_the_limit_reads_the_body(declared: int) -> None:
    body = b"x" * declared
    exchange = await _limit([_request(body)], headers=[(b"content-length", str(declared).encode())])
    assert exchange.app_read == [_request(body)]


async def test_a_declared_length_one_past_the_limit_is_refused_unread() -> None:
    exchange = await _limit(
        [_request(b"never read")],
        headers=[(b"host", b"x"), (b"content-length", b"9"), (b"content-length", b"1")],
    )
    status, _, error = _rejection(exchange)
    assert (status, error["details"]) == (413, {"limit_bytes": 8, "size_bytes": 9})
    assert exchange.received == 0


async def test_an_unparsable_declared_length_falls_back_to_counting() -> None:
    under = await _limit([_request(b"ok")], headers=[(b"content-length", b"lots")])
    assert under.app_read == [_request(b"ok")]
    over = await _limit([_request(b"123456789")], headers=[(b"content-length", b"lots")])
    assert _rejection(over)[2]["details"] == {"limit_bytes": 8, "size_bytes": 9}


async def test_the_default_limit_is_one_mebibyte() -> None:
    at = [(b"content-length", str(DEFAULT_BODY_LIMIT).encode())]
    exchange = await _limit([_request(b"")], limit=None, headers=at)
    assert exchange.app_read == [_request(b"")]
    past = [(b"content-length", str(DEFAULT_BODY_LIMIT + 1).encode())]
    exchange = await _limit([_request(b"")], limit=None, headers=past)
    assert _rejection(exchange)[2]["details"] == {
        "limit_bytes": DEFAULT_BODY_LIMIT,
        "size_bytes": DEFAULT_BODY_LIMIT + 1,
    }


async def test_after_the_replay_the_app_reads_from_the_client() -> None:
    # The app sees the client's disconnect (e.g. to cancel a run) after its body.
    disconnect = {"type": "http.disconnect"}
    exchange = await _limit([_request(b"{}"), disconnect], reads=2)
    assert exchange.app_read == [_request(b"{}"), disconnect]


async def test_a_client_gone_mid_body_gets_nothing() -> None:
    exchange = await _limit([_request(b"12", more=True), {"type": "http.disconnect"}])
    assert (exchange.app_read, exchange.sent) == (None, [])


class _Clock:
    """Stands in for the ``time`` module in the middleware: 12.34 ms per request."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        value = self.now
        self.now += 0.01234
        return value


async def _log(app: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Exchange, list[Any]]:
    monkeypatch.setattr(middleware, "time", SimpleNamespace(monotonic=_Clock().monotonic))
    exchange = Exchange([], [])
    with capture_logs() as logs:
        await AccessLog(app)(exchange.scope, exchange.receive, exchange.send)
    return exchange, logs


async def test_access_log_logs_one_line_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})

    exchange, logs = await _log(app, monkeypatch)
    assert exchange.sent == [
        {"type": "http.response.start", "status": 201, "headers": []},
        {"type": "http.response.body", "body": b"made"},
    ]
    assert logs == [
        {
            "event": "request",
            "log_level": "info",
            "method": "POST",
            "path": "/v1/x",
            "status": 201,
            "duration_ms": 12.3,  # 12.34 ms, rounded to 0.1
        }
    ]


async def test_a_bug_before_the_response_is_a_logged_generic_500(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    boom = RuntimeError("secret detail")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise boom

    exchange, logs = await _log(app, monkeypatch)
    start, body = exchange.sent
    assert start == {
        "type": "http.response.start",
        "status": 500,
        "headers": [(b"content-type", b"application/json")],
    }
    assert body["type"] == "http.response.body"
    assert json.loads(body["body"]) == {
        "error": {"code": "internal_error", "message": "internal server error", "details": {}}
    }
    assert logs == [
        {
            "event": "unhandled_error",
            "log_level": "error",
            "path": "/v1/x",
            "error": repr(boom),
            "exc_info": boom,
        },
        {
            "event": "request",
            "log_level": "info",
            "method": "POST",
            "path": "/v1/x",
            "status": 500,
            "duration_ms": 12.3,  # 12.34 ms, rounded to 0.1
        },
    ]


async def test_a_bug_after_the_response_started_sends_nothing_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-stream")

    exchange, logs = await _log(app, monkeypatch)
    assert exchange.sent == [{"type": "http.response.start", "status": 200, "headers": []}]
    assert [entry["event"] for entry in logs] == ["unhandled_error", "request"]
    assert logs[1]["status"] == 200


async def test_access_log_passes_other_scopes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    exchange = Exchange([], [])
    scope = {"type": "lifespan"}
    with capture_logs() as logs:
        await AccessLog(app)(scope, exchange.receive, exchange.send)
    assert seen == [(scope, exchange.receive, exchange.send)]
    assert logs == []


async def test_a_scope_without_headers_is_counted() -> None:
    exchange = Exchange([_request(b"{}")], [])
    del exchange.scope["headers"]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        exchange.app_read = [await receive()]

    await BodyLimit(app, limit=8)(exchange.scope, exchange.receive, exchange.send)
    assert exchange.app_read == [_request(b"{}")]
