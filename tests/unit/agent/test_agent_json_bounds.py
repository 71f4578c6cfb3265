"""Hostile JSON payloads: every one raises AgentProtocolError, never anything else."""

from __future__ import annotations

import json

import pytest

from cleanroom.agent.errors import AgentProtocolError
from cleanroom.agent.filemessages import parse_files_done
from cleanroom.agent.messages import (
    MAX_DEPTH,
    ExecRequest,
    parse_exec,
    parse_exit,
    parse_guest_hello,
)

HOSTILE = [
    pytest.param(b"[" * 10_000 + b"]" * 10_000, id="nested-arrays-10k"),
    pytest.param(b"[" * 10_000, id="unclosed-arrays-10k"),
    pytest.param(b'{"a":' * 5_000 + b"1" + b"}" * 5_000, id="nested-objects"),
    pytest.param(b"[" * 500_000, id="nested-arrays-500k"),
    pytest.param(b"\xff\xfe", id="bad-utf8"),
    pytest.param(b"1" * 100_000, id="huge-int"),
    pytest.param(b'"' + b"[" * 5000, id="unterminated-string"),
    pytest.param(b'{"a": "x"' + b"[" * 5000, id="brackets-after-string"),
    pytest.param(b"", id="empty"),
    pytest.param(b"NaN", id="nan"),
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_payloads_raise_protocol_error_only(payload: bytes) -> None:
    for parse in (parse_guest_hello, parse_exit, parse_files_done):
        with pytest.raises(AgentProtocolError):
            parse(payload)


def test_depth_limit_counts_only_structure() -> None:
    # Brackets inside strings (escaped quotes included) are data, not nesting.
    argv = ["[" * 1000, '\\"[[[[', "{" * 50 + '"']
    req = ExecRequest(argv=tuple(argv), env={"K": "]" * 20 + "[" * 20})
    frame_payload = req.to_frame()[5:]
    assert parse_exec(frame_payload).argv == tuple(argv)


def test_nesting_at_and_past_the_limit() -> None:
    def nested(depth: int) -> bytes:
        inner = "[" * (depth - 1) + "]" * (depth - 1)
        return json.dumps(
            {
                "exit_code": 0,
                "signal": None,
                "signal_name": inner,
                "timed_out": False,
                "duration_ms": 1.0,
            }
        ).encode()

    # A string full of brackets is fine at any length.
    assert parse_exit(nested(200)).exit_code == 0
    at_limit = b'{"agent_version": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
    at_limit += b', "protocol_version": 2, "kernel": "k", "python": "p"}'
    with pytest.raises(AgentProtocolError, match="must be str"):
        parse_guest_hello(at_limit)  # parsed (depth == MAX_DEPTH), then refused by type
    past = b'{"agent_version": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    past += b', "protocol_version": 2, "kernel": "k", "python": "p"}'
    with pytest.raises(AgentProtocolError, match="nested deeper"):
        parse_guest_hello(past)
