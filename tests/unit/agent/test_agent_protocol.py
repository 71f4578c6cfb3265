"""Unit tests of the sans-IO framing and the strict message codec."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleanroom.agent import messages as m
from cleanroom.agent.errors import AgentProtocolError
from cleanroom.agent.protocol import (
    EMPTY_TYPES,
    HEADER_SIZE,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    encode_frame,
)

SAMPLE = [
    Frame(FrameType.HELLO, b'{"protocol_version":1}'),
    Frame(FrameType.STDOUT, bytes(range(256))),
    Frame(FrameType.STDIN_EOF, b""),
    Frame(FrameType.STDERR, b""),
    Frame(FrameType.WORKSPACE_CHUNK, b"\x00" * 1000),
    Frame(FrameType.EXIT, b"{}"),
]


def _stream(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(f.type, f.payload) for f in frames)


def test_header_layout() -> None:
    assert encode_frame(FrameType.STDOUT, b"abc") == b"\x00\x00\x00\x03\x23abc"
    assert HEADER_SIZE == 5


def test_split_at_every_byte_boundary() -> None:
    data = _stream(SAMPLE)
    for cut in range(len(data) + 1):
        dec = FrameDecoder()
        got = dec.feed(data[:cut]) + dec.feed(data[cut:])
        assert got == SAMPLE, cut
        assert dec.pending == 0


def test_one_byte_at_a_time() -> None:
    dec = FrameDecoder()
    got: list[Frame] = []
    for byte in _stream(SAMPLE):
        got += dec.feed(bytes([byte]))
    assert got == SAMPLE


@given(
    frames=st.lists(
        st.tuples(
            st.sampled_from(sorted(set(FrameType) - EMPTY_TYPES)), st.binary(max_size=300)
        ).map(lambda t: Frame(t[0], t[1])),
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=6),
)
def test_any_chunking_decodes_the_same(frames: list[Frame], cuts: list[int]) -> None:
    data = _stream(frames)
    points = sorted({min(c, len(data)) for c in cuts})
    dec = FrameDecoder()
    got: list[Frame] = []
    prev = 0
    for p in [*points, len(data)]:
        got += dec.feed(data[prev:p])
        prev = p
    assert got == frames


def test_oversized_length_fails_on_the_header_alone() -> None:
    dec = FrameDecoder()
    with pytest.raises(AgentProtocolError, match="exceeds"):
        dec.feed(struct.pack(">IB", MAX_PAYLOAD + 1, FrameType.STDOUT))


def test_max_payload_is_accepted() -> None:
    frame = Frame(FrameType.STDOUT, b"x" * MAX_PAYLOAD)
    assert FrameDecoder().feed(encode_frame(frame.type, frame.payload)) == [frame]


def test_unknown_type_fails() -> None:
    with pytest.raises(AgentProtocolError, match="unknown frame type 0x7f"):
        FrameDecoder().feed(struct.pack(">IB", 0, 0x7F))


def test_payload_on_empty_marker_fails() -> None:
    with pytest.raises(AgentProtocolError):
        FrameDecoder().feed(struct.pack(">IB", 1, FrameType.SHUTDOWN) + b"x")
    with pytest.raises(AgentProtocolError):
        encode_frame(FrameType.SHUTDOWN, b"x")


def test_decoder_stays_failed() -> None:
    dec = FrameDecoder()
    with pytest.raises(AgentProtocolError):
        dec.feed(b"\xff\xff\xff\xff\x01")
    with pytest.raises(AgentProtocolError):
        dec.feed(encode_frame(FrameType.GOODBYE))


def test_encode_rejects_oversized_payload() -> None:
    with pytest.raises(AgentProtocolError):
        encode_frame(FrameType.STDOUT, b"x" * (MAX_PAYLOAD + 1))


def _payload(frame_bytes: bytes) -> bytes:
    (frame,) = FrameDecoder().feed(frame_bytes)
    return frame.payload


def test_messages_round_trip() -> None:
    net = m.GuestNetwork("10.0.0.2", 24, "10.0.0.1", "10.0.0.1", "02:00:00:00:00:01")
    cfg = m.ConfigureRequest(entropy_seed=bytes(range(64)), network=net)
    assert m.parse_configure(_payload(cfg.to_frame())) == cfg
    assert m.parse_configure(_payload(m.ConfigureRequest().to_frame())) == m.ConfigureRequest()
    ex = m.ExecRequest(("a", "b c"), {"K": "v"}, "/w", 2.5, "stream")
    assert m.parse_exec(_payload(ex.to_frame())) == ex
    in_workspace = m.ExecRequest(("true",))  # cwd None: the agent's workspace
    assert m.parse_exec(_payload(in_workspace.to_frame())) == in_workspace
    for begin in (m.WorkspaceBegin(True), m.WorkspaceBegin(False, scratch=True)):
        assert m.parse_workspace_begin(_payload(begin.to_frame())) == begin
    st_ = m.ExitStatus(137, 9, "SIGKILL", True, 12.5)
    assert m.parse_exit(_payload(st_.to_frame())) == st_
    info = m.GuestInfo("1", 1, "6.1", "3.11.2")
    assert m.parse_guest_hello(_payload(info.to_frame())) == info
    ws = m.WorkspaceStats(3, 100, 1)
    assert m.parse_workspace_done(_payload(ws.to_frame())) == ws
    assert m.parse_signal(_payload(m.SignalRequest(15).to_frame())) == m.SignalRequest(15)
    err = m.ErrorMessage("busy", "x")
    assert m.parse_error(_payload(err.to_frame())) == err


def _exec_obj(**over: object) -> bytes:
    obj: dict[str, object] = {
        "argv": ["true"],
        "env": None,
        "cwd": "/",
        "timeout": None,
        "stdin": "none",
        "tty": None,
    }
    obj.update(over)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"argv": ["true"]}',  # missing keys
        _exec_obj(extra=1),  # unknown key
        _exec_obj(argv=[]),
        _exec_obj(argv="true"),
        _exec_obj(argv=[1]),
        _exec_obj(env={"A": 1}),
        _exec_obj(env={"A=B": "x"}),
        _exec_obj(timeout=0),
        _exec_obj(timeout=True),
        _exec_obj(timeout="5"),
        _exec_obj(stdin="pty"),
        _exec_obj(cwd=1),
    ],
)
def test_exec_parsing_is_strict(payload: bytes) -> None:
    with pytest.raises(AgentProtocolError):
        m.parse_exec(payload)


def test_integers_accepted_as_float_but_not_bools_as_ints() -> None:
    assert m.parse_exec(_exec_obj(timeout=3)).timeout == 3.0
    with pytest.raises(AgentProtocolError):
        m.parse_signal(b'{"signal": true}')
    with pytest.raises(AgentProtocolError):
        m.parse_signal(b'{"signal": 0}')


def test_configure_parsing_is_strict() -> None:
    with pytest.raises(AgentProtocolError, match="base64"):
        m.parse_configure(b'{"entropy_seed": "***", "network": null}')
    with pytest.raises(AgentProtocolError):
        m.parse_configure(b'{"entropy_seed": null, "network": {"address": "1.2.3.4"}}')
    big = m.ConfigureRequest(entropy_seed=b"x" * (m.MAX_SEED + 1)).to_frame()
    with pytest.raises(AgentProtocolError, match="longer"):
        m.parse_configure(_payload(big))
    net = {"address": "a", "prefix": 33, "gateway": "g", "dns": "d", "mac": None}
    with pytest.raises(AgentProtocolError, match="prefix"):
        m.parse_configure(json.dumps({"entropy_seed": None, "network": net}).encode())
