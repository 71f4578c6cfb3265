"""Session behaviour of the real guest agent: malformed input, state rules, configure, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct

import pytest
from agent_harness import Agent, AgentFactory, Output

from cleanroom.agent import (
    AgentDisconnected,
    AgentNotReady,
    AgentProtocolError,
    AgentRemoteError,
    AgentTimeout,
    GuestNetwork,
)
from cleanroom.agent.host import AgentClient
from cleanroom.agent.messages import ExecRequest, HostHello, SignalRequest, parse_error, parse_exit
from cleanroom.agent.protocol import PROTOCOL_VERSION, Frame, FrameDecoder, FrameType, encode_frame

HELLO = HostHello(PROTOCOL_VERSION).to_frame()


async def _frames_until_eof(agent: Agent) -> list[Frame]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    async with asyncio.timeout(30):
        while data := await agent.reader.read(65536):
            frames += decoder.feed(data)
    return frames


async def _expect_session_end(agent: Agent, code: str, *, status: int = 3) -> None:
    frames = await _frames_until_eof(agent)
    errors = [f for f in frames if f.type is FrameType.ERROR]
    assert len(errors) == 1, frames
    assert parse_error(errors[0].payload).code == code
    exit_status, stderr = await agent.finish()
    assert exit_status == status
    assert "Traceback" not in stderr


def _hello_reply_then(frames: list[Frame]) -> list[Frame]:
    assert frames[0].type is FrameType.HELLO
    return frames[1:]


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-garbage"),
        pytest.param(struct.pack(">IB", (1 << 20) + 1, FrameType.HELLO), id="oversized"),
        pytest.param(struct.pack(">IB", 0, 0x7F), id="unknown-type"),
        pytest.param(encode_frame(FrameType.HELLO, b"{not json"), id="bad-json"),
        pytest.param(
            encode_frame(FrameType.HELLO, b'{"protocol_version":1,"x":2}'), id="extra-key"
        ),
        pytest.param(encode_frame(FrameType.EXEC, b"{}"), id="exec-before-hello"),
    ],
)
async def test_malformed_first_frame_ends_session(agents: AgentFactory, garbage: bytes) -> None:
    agent = await agents.start(greet=False)
    agent.writer.write(garbage)
    await agent.writer.drain()
    await _expect_session_end(agent, "protocol_error")


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(encode_frame(FrameType.EXEC, b'{"argv": []}'), id="bad-exec"),
        pytest.param(encode_frame(FrameType.STDOUT, b"x"), id="guest-only-type"),
        pytest.param(encode_frame(FrameType.WORKSPACE_CHUNK, b"x"), id="chunk-without-begin"),
        pytest.param(HELLO, id="second-hello"),
        pytest.param(struct.pack(">IB", 0, 0xEE), id="unknown-type"),
    ],
)
async def test_malformed_frame_after_hello_ends_session(agents: AgentFactory, frame: bytes) -> None:
    agent = await agents.start(greet=False)
    agent.writer.write(HELLO + frame)
    await agent.writer.drain()
    frames = _hello_reply_then(await _frames_until_eof(agent))
    assert [f.type for f in frames] == [FrameType.ERROR]
    assert parse_error(frames[0].payload).code == "protocol_error"
    status, stderr = await agent.finish()
    assert status == 3
    assert "Traceback" not in stderr


async def test_version_mismatch(agents: AgentFactory) -> None:
    agent = await agents.start(greet=False)
    agent.writer.write(HostHello(PROTOCOL_VERSION + 1).to_frame())
    await agent.writer.drain()
    await _expect_session_end(agent, "version_mismatch")


async def test_truncated_frame_then_eof_exits_cleanly(agents: AgentFactory) -> None:
    agent = await agents.start(greet=False)
    agent.writer.write(HELLO + HELLO[:3])
    agent.writer.write_eof()
    frames = _hello_reply_then(await _frames_until_eof(agent))
    assert frames == []
    status, stderr = await agent.finish()
    assert status == 0
    assert "Traceback" not in stderr


async def test_exec_while_busy_is_refused_and_command_survives(agents: AgentFactory) -> None:
    agent = await agents.start(greet=False)
    sleeper = ExecRequest(("sleep", "300"), cwd="/").to_frame()
    agent.writer.write(HELLO + sleeper + ExecRequest(("true",), cwd="/").to_frame())
    await agent.writer.drain()
    decoder = FrameDecoder()
    frames: list[Frame] = []
    async with asyncio.timeout(30):
        while len(frames) < 2:
            frames += decoder.feed(await agent.reader.read(65536))
        assert frames[1].type is FrameType.ERROR
        assert parse_error(frames[1].payload).code == "busy"
        agent.writer.write(SignalRequest(9).to_frame())
        while not any(f.type is FrameType.EXIT for f in frames):
            frames += decoder.feed(await agent.reader.read(65536))
    exit_frame = next(f for f in frames if f.type is FrameType.EXIT)
    assert parse_exit(exit_frame.payload).exit_code == 128 + 9


async def test_configure_entropy_and_unprivileged_network(agent: Agent) -> None:
    await agent.client.configure(entropy_seed=os.urandom(64))
    net = GuestNetwork("10.99.0.2", 24, "10.99.0.1", "10.99.0.1", None)
    with pytest.raises(AgentRemoteError) as info:
        await agent.client.configure(network=net)
    assert info.value.remote_code == "configure_failed"
    status = await agent.client.exec(["true"], cwd="/", on_output=Output())
    assert status.exit_code == 0


async def test_shutdown_says_goodbye_and_exits(agent: Agent) -> None:
    await agent.client.shutdown()
    async with asyncio.timeout(30):
        assert await agent.proc.wait() == 0


async def test_shutdown_during_exec_ends_the_command(agent: Agent) -> None:
    task = asyncio.create_task(agent.client.exec(["sleep", "300"], cwd="/", on_output=Output()))
    await asyncio.sleep(0)  # let the exec go out first
    await agent.client.shutdown()
    status = await asyncio.wait_for(task, 30)
    assert status.signal == 9
    async with asyncio.timeout(30):
        assert await agent.proc.wait() == 0


async def _client_pair(**kwargs: float) -> tuple[AgentClient, socket.socket]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return AgentClient(reader, writer, **kwargs), theirs


async def test_hello_timeout_is_not_ready() -> None:
    client, peer = await _client_pair()
    try:
        with pytest.raises(AgentNotReady):
            await client.hello(timeout=0.2)
    finally:
        await client.close()
        peer.close()


async def test_peer_closing_is_disconnected() -> None:
    client, peer = await _client_pair()
    peer.close()
    try:
        with pytest.raises(AgentDisconnected):
            await client.hello(timeout=10)
    finally:
        await client.close()


async def test_host_rejects_malformed_reply() -> None:
    client, peer = await _client_pair()
    peer.sendall(encode_frame(FrameType.HELLO, json.dumps({"protocol_version": 1}).encode()))
    try:
        with pytest.raises(AgentProtocolError):
            await client.hello(timeout=10)
    finally:
        await client.close()
        peer.close()


async def test_guest_silent_past_the_deadline_is_agent_timeout() -> None:
    client, peer = await _client_pair(exec_grace=0.2)
    try:
        with pytest.raises(AgentTimeout):
            await client.exec(["sleep", "1"], timeout=0.1, on_output=Output())
    finally:
        await client.close()
        peer.close()


async def test_cancelled_exec_is_killed_and_skipped(agent: Agent) -> None:
    out = Output()
    started = asyncio.Event()

    async def on_output(stream: str, data: bytes) -> None:
        await out(stream, data)
        started.set()

    run = agent.client.exec(
        ["sh", "-c", "echo first; exec sleep 300"], cwd="/", on_output=on_output
    )
    task = asyncio.create_task(run)
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The abandoned command is killed; its EXIT is skipped; the next exec is clean.
    nxt = Output()
    status = await asyncio.wait_for(
        agent.client.exec(["echo", "second"], cwd="/", on_output=nxt), 30
    )
    assert (status.exit_code, bytes(nxt.stdout)) == (0, b"second\n")
    assert bytes(out.stdout) == b"first\n"


@pytest.mark.parametrize(
    ("argv", "env"),
    [([], None), (["true"], {"A=B": "x"}), (["true"], {"": "x"})],
)
async def test_invalid_exec_arguments_fail_locally(
    agent: Agent, argv: list[str], env: dict[str, str] | None
) -> None:
    with pytest.raises(ValueError, match="invalid request"):
        await agent.client.exec(argv, env=env, cwd="/", on_output=Output())
    status = await agent.client.exec(["true"], cwd="/", on_output=Output())
    assert status.exit_code == 0
