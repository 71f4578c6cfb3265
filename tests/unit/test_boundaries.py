"""Every cap at its limit and one past it: request body, output capture, agent frame.

A cap tested only far beyond its limit lets an off-by-one (``>`` vs ``>=``)
through; each test here sends exactly the limit (accepted, untouched) and one
byte more (refused or truncated), through the real component.
"""

from __future__ import annotations

import itertools
import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from shared_server import shared_host  # noqa: F401 - the tests share one server

from cleanroom.agent.errors import AgentProtocolError
from cleanroom.agent.protocol import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    encode_frame,
)
from cleanroom.server.middleware import DEFAULT_BODY_LIMIT, BodyLimit
from cleanroom.service.output import CAPTURE_LIMIT, OutputCapture
from cleanroom.service.types import RunEvent

MIB = 1024 * 1024


def test_the_caps_are_what_the_docs_say() -> None:
    assert DEFAULT_BODY_LIMIT == MIB
    assert CAPTURE_LIMIT == MIB
    assert MAX_PAYLOAD == MIB


# Request body (server/middleware.py), over a real server


@pytest.fixture
def http(host: str) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=host.removeprefix("unix://"))
    with httpx.Client(transport=transport, base_url="http://cleanroom", timeout=60) as client:
        yield client


def _run_body(size: int) -> bytes:
    """A valid run request of exactly ``size`` bytes (for a context that does not exist)."""
    empty = json.dumps({"cleanroom_id": "cr-nope", "command": ["echo", ""]}).encode()
    body = json.dumps({"cleanroom_id": "cr-nope", "command": ["echo", "a" * (size - len(empty))]})
    assert len(body.encode()) == size
    return body.encode()


def _chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_of_exactly_the_limit_reaches_the_app(http: httpx.Client, chunked: bool) -> None:
    body = _run_body(DEFAULT_BODY_LIMIT)
    content = _chunks(body) if chunked else body
    response = http.post(
        "/v1/cleanrooms/run", content=content, headers={"content-type": "application/json"}
    )
    # The app answered: the whole body was parsed and the id looked up.
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "cleanroom_not_found"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_one_past_the_limit_is_413(http: httpx.Client, chunked: bool) -> None:
    body = _run_body(DEFAULT_BODY_LIMIT + 1)
    content = _chunks(body) if chunked else body
    response = http.post(
        "/v1/cleanrooms/run", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    # The unread rest of the body must not be taken for a next request.
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == (
        f"request body too large ({DEFAULT_BODY_LIMIT + 1} bytes; "
        f"the limit is {DEFAULT_BODY_LIMIT})"
    )
    assert error["details"]["limit_bytes"] == DEFAULT_BODY_LIMIT
    assert error["details"]["size_bytes"] == DEFAULT_BODY_LIMIT + 1


def test_declared_length_past_the_limit_is_refused_before_any_body(host: str) -> None:
    # Content-Length alone says too much: the answer comes without the server
    # waiting for (or buffering) a single byte of the body.
    head = (
        "POST /v1/cleanrooms/run HTTP/1.1\r\nHost: cleanroom\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {DEFAULT_BODY_LIMIT + 1}\r\n\r\n"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(15)
        conn.connect(host.removeprefix("unix://"))
        conn.sendall(head.encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = conn.recv(65536)
            assert chunk, "the server closed without answering"
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413 ")


# Output capture (service/output.py)


@pytest.mark.parametrize("pieces", [1, 2, 7])
async def test_capture_of_exactly_the_limit_is_whole(tmp_path: Path, pieces: int) -> None:
    seen: list[RunEvent] = []

    async def sink(event: RunEvent) -> None:
        seen.append(event)

    cap = OutputCapture(tmp_path, sink)
    data = bytes(i % 251 for i in range(CAPTURE_LIMIT))
    cuts = [CAPTURE_LIMIT * k // pieces for k in range(pieces + 1)]
    for start, end in itertools.pairwise(cuts):
        await cap.write("stdout", data[start:end])
    cap.close()
    assert not cap.truncated("stdout")
    assert cap.text("stdout") == data.decode("utf-8", errors="replace")
    assert (tmp_path / "stdout.log").read_bytes() == data
    assert len(seen) == pieces


@pytest.mark.parametrize("pieces", [1, 2, 7])
async def test_capture_one_past_the_limit_is_truncated(tmp_path: Path, pieces: int) -> None:
    cap = OutputCapture(tmp_path, None)
    data = b"b" * CAPTURE_LIMIT + b"Z"
    cuts = [len(data) * k // pieces for k in range(pieces + 1)]
    for start, end in itertools.pairwise(cuts):
        await cap.write("stderr", data[start:end])
    cap.close()
    assert cap.truncated("stderr")
    assert not cap.truncated("stdout")
    assert cap.text("stderr") == "b" * CAPTURE_LIMIT  # the prefix, without the extra byte
    assert (tmp_path / "stderr.log").read_bytes() == data  # the log keeps everything


async def test_capture_past_the_limit_keeps_only_the_prefix(tmp_path: Path) -> None:
    cap = OutputCapture(tmp_path, None)
    await cap.write("stdout", b"x" * (CAPTURE_LIMIT - 1))
    await cap.write("stdout", b"yz")  # straddles the limit
    await cap.write("stdout", b"more")  # wholly past it
    cap.close()
    assert cap.text("stdout") == "x" * (CAPTURE_LIMIT - 1) + "y"
    assert cap.truncated("stdout")


@pytest.mark.parametrize(("size", "truncated"), [(CAPTURE_LIMIT, False), (CAPTURE_LIMIT + 1, True)])
def test_run_output_at_and_past_the_limit_over_http(
    http: httpx.Client, repo: Path, size: int, truncated: bool
) -> None:
    # The real service with a real agent: the command's bytes go through the
    # agent protocol, the capture, the response and the record.
    script = f"head -c {size} /dev/zero | tr '\\0' q; printf e >&2"
    response = http.post("/v1/exec", json={"cwd": str(repo), "command": ["sh", "-c", script]})
    assert response.status_code == 200
    result = response.json()
    assert result["stdout_truncated"] is truncated
    assert result["stderr_truncated"] is False
    assert result["stdout"] == "q" * CAPTURE_LIMIT
    assert result["stderr"] == "e"
    assert (Path(result["run_dir"]) / "stdout.log").stat().st_size == size
    record = http.get(f"/v1/runs/{result['run_id']}").json()
    assert (record["stdout_truncated"], record["stderr_truncated"]) == (truncated, False)


# Agent frames (agent/protocol.py)


def test_frame_of_exactly_the_limit_encodes_and_decodes() -> None:
    payload = b"p" * MAX_PAYLOAD
    wire = encode_frame(FrameType.STDOUT, payload)
    assert len(wire) == HEADER_SIZE + MAX_PAYLOAD
    decoder = FrameDecoder()
    decoder.push(wire[:-1])
    assert decoder.pop() is None  # one byte short: still waiting, not failed
    decoder.push(wire[-1:])
    frame = decoder.pop()
    assert frame is not None
    assert (frame.type, frame.payload) == (FrameType.STDOUT, payload)


def test_frame_one_past_the_limit_is_refused_both_ways() -> None:
    with pytest.raises(AgentProtocolError, match="exceeds"):
        encode_frame(FrameType.STDOUT, b"p" * (MAX_PAYLOAD + 1))
    decoder = FrameDecoder()
    decoder.push(struct.pack(">IB", MAX_PAYLOAD + 1, FrameType.STDOUT))
    with pytest.raises(AgentProtocolError, match="exceeds"):
        decoder.pop()  # refused on the header, before any payload is buffered
    assert decoder.pending == 0


@pytest.mark.parametrize("limit", [0, 1, 4096])
def test_decoder_limit_is_inclusive(limit: int) -> None:
    at = FrameDecoder(max_payload=limit)
    assert at.feed(struct.pack(">IB", limit, FrameType.STDIN) + b"s" * limit) == [
        Frame(FrameType.STDIN, b"s" * limit)
    ]
    past = FrameDecoder(max_payload=limit)
    with pytest.raises(AgentProtocolError):
        past.feed(struct.pack(">IB", limit + 1, FrameType.STDIN))


async def test_body_limit_passes_other_scopes_through_untouched() -> None:
    seen: list[tuple[object, object, object]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        raise AssertionError("a lifespan scope's messages are the app's to read")

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent for the app")

    scope = {"type": "lifespan"}
    await BodyLimit(app, limit=0)(scope, receive, send)
    assert seen == [(scope, receive, send)]
    assert seen[0][0] is scope


async def _drive(messages: list[dict[str, Any]], limit: int = 8) -> tuple[list[Any], list[Any]]:
    """Run BodyLimit over an HTTP scope whose receive yields ``messages``; returns what
    the app read (None if it was never called) and what was sent."""
    reached: list[Any] = []
    sent: list[Any] = []
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    async def app(scope: Any, app_receive: Any, app_send: Any) -> None:
        reached.append(await app_receive())

    await BodyLimit(app, limit=limit)({"type": "http", "headers": []}, receive, send)
    return reached, sent


async def test_body_limit_never_calls_the_app_for_a_client_that_left() -> None:
    reached, sent = await _drive(
        [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    )
    assert (reached, sent) == ([], [])  # a partial body is never executed


async def test_body_limit_reads_messages_without_the_optional_keys() -> None:
    # ASGI makes "body" (default b"") and "more_body" (default False) optional.
    reached, _ = await _drive([{"type": "http.request"}])
    assert reached == [{"type": "http.request", "body": b"", "more_body": False}]
    reached, _ = await _drive(
        [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request"}]
    )
    assert reached == [{"type": "http.request", "body": b"ab", "more_body": False}]
