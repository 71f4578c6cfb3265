"""The run-input rules (env names, stdin, artifact globs): the same verdict from the
plain-Python check, the strict dict parser and pydantic (the server's validation)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from cleanroom.errors import InvalidRequest
from cleanroom.models import MAX_STDIN_BYTES, ExecRequest, RunRequest, from_dict

SECRET = "value-not-to-echo-1b2c"
BASE: dict[str, Any] = {"cleanroom_id": "cr-1", "command": ["true"]}


def _b64(n: int) -> str:
    return base64.b64encode(b"x" * n).decode()


GOOD: list[dict[str, Any]] = [
    {"env": {"A": SECRET, "lower_case.dots-1": "", "UNICODE_É": "ü"}},
    {"stdin_base64": _b64(MAX_STDIN_BYTES)},
    {"stdin_base64": ""},
    {"artifacts": ["out/**/*.xml", "report.txt", "a/b?/c*"]},
    {"artifacts": []},
]
BAD: list[dict[str, Any]] = [
    {"env": {"": SECRET}},
    {"env": {"A=B": SECRET}},
    {"env": {"A\x00": SECRET}},
    {"env": {"A": "x\x00" + SECRET}},
    {"env": {"A": 1}},
    {"stdin_base64": _b64(MAX_STDIN_BYTES + 1)},
    {"stdin_base64": "not base64!"},
    {"artifacts": ["/abs"]},
    {"artifacts": ["a/../b"]},
    {"artifacts": ["a//b"]},
    {"artifacts": [""]},
    {"artifacts": "*.txt"},
    {"artifacts": ["x"] * 65},
]


@pytest.mark.parametrize("extra", GOOD)
def test_accepted_everywhere(extra: dict[str, Any]) -> None:
    body = {**BASE, **extra}
    request = from_dict(RunRequest, body)
    assert TypeAdapter(RunRequest).validate_python(body) == request
    exec_body = {"cwd": "/repo", "command": ["true"], **extra}
    assert from_dict(ExecRequest, exec_body) == TypeAdapter(ExecRequest).validate_python(exec_body)
    assert SECRET not in repr(request)


@pytest.mark.parametrize("extra", BAD)
def test_refused_everywhere_without_echoing_values(extra: dict[str, Any]) -> None:
    body = {**BASE, **extra}
    with pytest.raises(InvalidRequest) as caught:
        from_dict(RunRequest, body)
    assert SECRET not in str(caught.value)
    assert SECRET not in str(caught.value.details)
    with pytest.raises(ValidationError) as refused:
        TypeAdapter(RunRequest).validate_python(body)
    shown = [
        {k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in refused.value.errors()
    ]
    assert SECRET not in str(shown)


def test_stdin_decodes() -> None:
    request = RunRequest("cr-1", ("cat",), stdin_base64=base64.b64encode(b"\x00\xff").decode())
    assert request.stdin_bytes == b"\x00\xff"
    assert RunRequest("cr-1", ("cat",)).stdin_bytes is None
