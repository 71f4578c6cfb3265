"""NDJSON streaming over a real socket: live output, binary data, cancellation, parallel runs."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom.server import Utf8Chunker
from cleanroom.service import Service
from cleanroom.testing import ServerThread, runs_with_status

NDJSON = {"accept": "application/x-ndjson"}


@pytest.fixture
def http(server: ServerThread, sock: Path) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, base_url="http://cleanroom", timeout=30) as client:
        yield client


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def stream_lines(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", "/v1/exec", json=body, headers=NDJSON) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines() if line]


def test_output_arrives_while_the_command_runs(http: httpx.Client, repo: Path) -> None:
    marker, go = repo / "finished", repo / "go"
    # The command goes on only once the test has seen its first line (a minute at most).
    wait = f"i=0; while [ ! -e {go} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"
    command = ["sh", "-c", f"echo first; echo oops >&2; {wait}; touch {marker}; echo second"]
    seen: list[dict[str, Any]] = []
    with http.stream(
        "POST", "/v1/exec", json={"cwd": str(repo), "command": command}, headers=NDJSON
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            event = json.loads(line)
            seen.append(event)
            if event == {"type": "stdout", "data": "first\n"}:
                # The command is still waiting: it has not reached `touch` yet.
                assert not marker.exists()
                go.touch()
    assert marker.exists()
    assert seen[0]["type"] == "started"
    assert seen[0]["run_id"].startswith("run-")
    assert {"type": "stdout", "data": "first\n"} in seen
    assert {"type": "stderr", "data": "oops\n"} in seen
    assert seen.index({"type": "stdout", "data": "first\n"}) < seen.index(
        {"type": "stdout", "data": "second\n"}
    )
    final = seen[-1]
    assert final["type"] == "exit"
    assert final["exit_code"] == 0
    assert final["stdout"] == "first\nsecond\n"
    assert final["run_id"] == seen[0]["run_id"]


def test_non_utf8_output_is_base64(http: httpx.Client, repo: Path) -> None:
    code = "import sys; sys.stdout.buffer.write(b'\\xff\\xfe\\x00bin'); sys.stdout.flush()"
    events = stream_lines(http, {"cwd": str(repo), "command": py(code)})
    chunks = [e for e in events if e["type"] == "stdout"]
    assert chunks
    assert all(c["encoding"] == "base64" for c in chunks)
    assert b"".join(base64.b64decode(c["data"]) for c in chunks) == b"\xff\xfe\x00bin"
    assert events[-1]["type"] == "exit"


def test_split_utf8_sequence_stays_text(http: httpx.Client, repo: Path) -> None:
    # "é" is c3 a9: write the two bytes in separate flushes, with a pause between.
    code = (
        "import sys, time; o = sys.stdout.buffer; o.write(b'caf\\xc3'); o.flush(); "
        "time.sleep(0.5); o.write(b'\\xa9!'); o.flush()"
    )
    events = stream_lines(http, {"cwd": str(repo), "command": py(code)})
    chunks = [e for e in events if e["type"] == "stdout"]
    assert all("encoding" not in c for c in chunks)
    assert "".join(c["data"] for c in chunks) == "café!"


def test_chunker_units() -> None:
    chunker = Utf8Chunker()
    assert chunker.feed(b"a\xe2\x82") == ("a", None)  # two bytes of the euro sign held back
    assert chunker.feed(b"\xac b") == ("\u20ac b", None)
    assert chunker.feed(b"\xf0") is None  # only a lead byte: nothing to send yet
    assert chunker.flush() == (base64.b64encode(b"\xf0").decode(), "base64")
    assert chunker.feed(b"\x80abc") == (base64.b64encode(b"\x80abc").decode(), "base64")
    assert chunker.feed(b"ok\xc3\xa9") == ("ok\u00e9", None)
    assert chunker.flush() is None


def test_error_before_start_is_a_plain_error_response(http: httpx.Client) -> None:
    response = http.post(
        "/v1/cleanrooms/run", json={"cleanroom_id": "cr-nope", "command": ["true"]}, headers=NDJSON
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "cleanroom_not_found"


def test_error_after_start_is_the_last_line(http: httpx.Client, repo: Path) -> None:
    events = stream_lines(
        http,
        {"cwd": str(repo), "command": ["sh", "-c", "echo before; sleep 30"], "timeout_seconds": 1},
    )
    assert events[0]["type"] == "started"
    assert {"type": "stdout", "data": "before\n"} in events
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == "run_timeout"


def test_terminate_cancels_a_streamed_run(http: httpx.Client, repo: Path, sock: Path) -> None:
    cid = http.post("/v1/cleanrooms/launch", json={"cwd": str(repo)}).json()["cleanroom_id"]
    with http.stream(
        "POST",
        "/v1/cleanrooms/run",
        json={"cleanroom_id": cid, "command": ["sleep", "60"]},
        headers=NDJSON,
    ) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["type"] == "started"
        other = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://x")
        with other:
            assert other.post("/v1/cleanrooms/terminate", json={"cleanroom_id": cid}).is_success
        last = json.loads(list(lines)[-1])
    assert last["type"] == "error"
    assert last["error"]["code"] == "run_cancelled"


def wait_for(condition: Any, what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_the_run(
    server: ServerThread, sock: Path, service: Service, repo: Path, stream: bool
) -> None:
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, base_url="http://x", timeout=2) as client:
        body = {"cwd": str(repo), "command": ["sleep", "60"]}
        if stream:
            with client.stream("POST", "/v1/exec", json=body, headers=NDJSON) as response:
                started = json.loads(next(response.iter_lines()))
            # leaving the block closed the connection mid-stream
            wait_for(
                lambda: started["run_id"] in runs_with_status("cancelled"),
                "the run to be cancelled",
            )
        else:
            with pytest.raises(httpx.ReadTimeout):
                client.post("/v1/exec", json=body)  # the client gives up after 2 s
            wait_for(lambda: len(runs_with_status("cancelled")) == 1, "the run to be cancelled")
    wait_for(lambda: service.list_cleanrooms() == [], "the exec context to be terminated")


async def test_parallel_runs_through_the_server(
    server: ServerThread, sock: Path, repo: Path
) -> None:
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport, base_url="http://x", timeout=60) as client:
        launched = await asyncio.gather(
            *(client.post("/v1/cleanrooms/launch", json={"cwd": str(repo)}) for _ in range(2))
        )
        ids = [r.json()["cleanroom_id"] for r in launched]

        async def one(i: int) -> dict[str, Any]:
            cmd = ["sh", "-c", f"sleep 0.3; echo run-{i}; echo err-{i} >&2; exit {i}"]
            body = {"cleanroom_id": ids[i % 2], "command": cmd}
            if i % 2:
                response = await client.post("/v1/cleanrooms/run", json=body)
                result: dict[str, Any] = response.json()
                return result
            async with client.stream(
                "POST", "/v1/cleanrooms/run", json=body, headers=NDJSON
            ) as response:
                lines = [json.loads(line) async for line in response.aiter_lines() if line]
            last: dict[str, Any] = lines[-1]
            return last

        results = await asyncio.gather(*(one(i) for i in range(8)))
    for i, result in enumerate(results):
        assert result["exit_code"] == i
        assert result["stdout"] == f"run-{i}\n"
        assert result["stderr"] == f"err-{i}\n"
        assert result["cleanroom_id"] == ids[i % 2]
    assert len({r["run_id"] for r in results}) == 8
