"""The ``/v1/exec/tty`` WebSocket against the real server and service (agent-process guests):
its protocol errors, and a client that goes away cancelling the run."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, unix_connect

from cleanroom.client import AsyncClient, Client
from cleanroom.client._terminal import TerminalEvent
from cleanroom.client._tty import TerminalExit, TerminalOutput
from cleanroom.client._tty_async import AsyncTerminalSession
from cleanroom.errors import InvalidRequest, ServerUnavailable
from cleanroom.testing import runs_with_status


def _connect(host: str) -> ClientConnection:
    return unix_connect(host.removeprefix("unix://"), "ws://cleanroom/v1/exec/tty")


@pytest.mark.parametrize(
    "first",
    [
        "not json",
        json.dumps({"request": {"cwd": "/", "command": ["true"]}, "rows": 24}),
        json.dumps({"request": {"cwd": "rel", "command": ["true"]}, "rows": 24, "cols": 80}),
        json.dumps({"request": {"cwd": "/", "command": ["true"]}, "rows": 0, "cols": 80}),
    ],
)
def test_a_malformed_start_is_invalid_request(host: str, first: str) -> None:
    with _connect(host) as ws:
        ws.send(first)
        event = json.loads(ws.recv(timeout=30))
    assert event["type"] == "error"
    assert event["error"]["code"] == "invalid_request"


def test_a_malformed_control_message_ends_the_run_with_invalid_request(
    host: str, repo: Path
) -> None:
    with Client(host) as client:
        session = client.exec_tty(repo, ["sh", "-c", "sleep 30"], rows=24, cols=80)
        session.resize(24, 81)
        session._safe(json.dumps({"type": "dance"}))
        with session, pytest.raises(InvalidRequest):
            list(session.events())


def test_output_and_exit_through_the_session(host: str, repo: Path) -> None:
    with Client(host) as client:
        session = client.exec_tty(
            repo, ["sh", "-c", "stty size; read x; echo got:$x; exit 4"], rows=12, cols=34
        )
        session.send(b"abc\r")
        with session:
            events = list(session.events())
    shown = b"".join(e.data for e in events if isinstance(e, TerminalOutput))
    assert b"12 34" in shown
    assert b"got:abc" in shown
    last = events[-1]
    assert isinstance(last, TerminalExit)
    assert last.result.exit_code == 4
    assert session.run_id == last.result.run_id


def test_closing_the_connection_cancels_the_run(host: str, repo: Path, state: Path) -> None:
    with Client(host) as client:
        command = ["sh", "-c", "echo started; exec sleep 300"]
        session = client.exec_tty(repo, command, rows=24, cols=80)
        events = session.events()
        shown = b""
        for event in events:  # until the run has started
            if isinstance(event, TerminalOutput):
                shown += event.data
                if b"started" in shown:
                    break
        session.close()
        del events
        deadline = time.monotonic() + 60
        while not runs_with_status("cancelled") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert runs_with_status("cancelled")
        assert client.list_cleanrooms() == []


# The asyncio client's terminal: the same session, awaitable.


async def _collect(session: AsyncTerminalSession) -> list[TerminalEvent]:
    return [event async for event in session.events()]


def test_async_output_and_exit_through_the_session(host: str, repo: Path) -> None:
    async def main() -> tuple[list[TerminalEvent], str | None]:
        async with AsyncClient(host) as client:
            session = await client.exec_tty(
                repo, ["sh", "-c", "stty size; read x; echo got:$x; exit 4"], rows=12, cols=34
            )
            async with session:
                await session.send(b"abc\r")
                return await _collect(session), session.run_id

    events, run_id = asyncio.run(main())
    shown = b"".join(e.data for e in events if isinstance(e, TerminalOutput))
    assert b"12 34" in shown
    assert b"got:abc" in shown
    last = events[-1]
    assert isinstance(last, TerminalExit)
    assert last.result.exit_code == 4
    assert run_id == last.result.run_id


def test_async_resize_signal_and_eof(host: str, repo: Path) -> None:
    script = (
        "trap 'stty size; echo trapped; exit 7' INT; echo ready; "
        "cat >/dev/null; echo eof-seen; while :; do sleep 0.1; done"
    )

    async def main() -> list[TerminalEvent]:
        async with AsyncClient(host) as client:
            session = await client.exec_tty(repo, ["sh", "-c", script], rows=24, cols=80)
            async with session:
                events: list[TerminalEvent] = []
                shown = b""
                signalled = False
                async for event in session.events():
                    events.append(event)
                    if isinstance(event, TerminalOutput):
                        shown += event.data
                        if b"ready" in shown and b"eof-seen" not in shown:
                            await session.eof()
                        if b"eof-seen" in shown and not signalled:
                            signalled = True
                            await session.resize(30, 90)
                            await session.signal(signal.SIGINT)
                return events

    events = asyncio.run(main())
    shown = b"".join(e.data for e in events if isinstance(e, TerminalOutput))
    assert b"30 90" in shown
    assert b"trapped" in shown
    last = events[-1]
    assert isinstance(last, TerminalExit)
    assert last.result.exit_code == 7


def test_async_run_errors_are_raised(host: str, repo: Path) -> None:
    async def main() -> None:
        async with AsyncClient(host) as client:
            session = await client.exec_tty(repo, ["sh", "-c", "sleep 30"], rows=24, cols=80)
            await session._safe(json.dumps({"type": "dance"}))
            async with session:
                await _collect(session)

    with pytest.raises(InvalidRequest):
        asyncio.run(main())


def test_async_closing_cancels_the_run(host: str, repo: Path, state: Path) -> None:
    async def main() -> None:
        async with AsyncClient(host) as client:
            command = ["sh", "-c", "echo started; exec sleep 300"]
            session = await client.exec_tty(repo, command, rows=24, cols=80)
            shown = b""
            async for event in session.events():  # until the run has started
                if isinstance(event, TerminalOutput):
                    shown += event.data
                    if b"started" in shown:
                        break
            await session.aclose()

    asyncio.run(main())
    deadline = time.monotonic() + 60
    while not runs_with_status("cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert runs_with_status("cancelled")
    with Client(host) as client:
        assert client.list_cleanrooms() == []


def test_async_terminal_needs_a_server(root: Path, repo: Path) -> None:
    async def main() -> None:
        async with AsyncClient(f"unix://{root}/nobody.sock") as client:
            await client.exec_tty(repo, ["true"], rows=24, cols=80)

    with pytest.raises(ServerUnavailable):
        asyncio.run(main())
