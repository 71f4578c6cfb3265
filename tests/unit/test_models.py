"""The wire models and the NDJSON codec: each rule stated once, enforced the same way in
plain Python and by pydantic (the server), strict parsing, and lossless round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from cleanroom.errors import CleanroomError, InvalidRequest, RunTimeout
from cleanroom.events import (
    EventDecoder,
    Utf8Chunker,
    error_line,
    exit_line,
    output_line,
    started_line,
)
from cleanroom.models import (
    CleanroomInfo,
    DoctorCheck,
    DoctorReport,
    ExecRequest,
    LaunchOptions,
    LaunchRequest,
    RunExit,
    RunOutput,
    RunRequest,
    RunResult,
    RunStarted,
    from_dict,
    to_dict,
)

RESULT = RunResult(
    run_id="run-1",
    cleanroom_id="cr-1",
    exit_code=137,
    stdout="out",
    stderr="",
    run_dir=Path("/runs/run-1"),
    plan_path=Path("/runs/run-1/plan.json"),
    signal="SIGKILL",
    stdout_truncated=True,
)

GOOD_EXEC = {"cwd": "/repo", "command": ["true"]}

# (body, loc, type): one case per rule, as both enforcers must report it.
BAD_EXEC = [
    ({"cwd": "repo", "command": ["true"]}, ["cwd"], "value_error"),
    ({"cwd": "/re\u0000po", "command": ["true"]}, ["cwd"], "string_pattern_mismatch"),
    ({"cwd": "/repo", "command": []}, ["command"], "too_short"),
    ({"cwd": "/repo", "command": ["a\u0000b"]}, ["command"], "string_pattern_mismatch"),
    ({**GOOD_EXEC, "timeout_seconds": 0}, ["timeout_seconds"], "greater_than"),
    ({**GOOD_EXEC, "timeout_seconds": 86401}, ["timeout_seconds"], "less_than_equal"),
    ({**GOOD_EXEC, "backend": "q\u0000"}, ["backend"], "string_pattern_mismatch"),
    ({**GOOD_EXEC, "options": {"run_dir": "rel"}}, ["options", "run_dir"], "value_error"),
    (
        {**GOOD_EXEC, "options": {"launch_seconds": 0}},
        ["options", "launch_seconds"],
        "greater_than",
    ),
    (
        {**GOOD_EXEC, "options": {"launch_seconds": 3601}},
        ["options", "launch_seconds"],
        "less_than_equal",
    ),
]


@pytest.mark.parametrize(("body", "loc", "kind"), BAD_EXEC)
def test_each_rule_is_enforced_alike_in_python_and_by_pydantic(
    body: dict[str, Any], loc: list[str], kind: str
) -> None:
    with pytest.raises(InvalidRequest) as plain:
        from_dict(ExecRequest, body)
    [error] = plain.value.details["errors"]
    assert (error["loc"], error["type"]) == (["body", *loc], kind)

    with pytest.raises(ValidationError) as server:
        TypeAdapter(ExecRequest).validate_python(body)
    seen = [(list(e["loc"])[: len(loc)], e["type"]) for e in server.value.errors()]
    assert (loc, kind) in seen


def test_valid_bodies_give_equal_values_either_way() -> None:
    body = {**GOOD_EXEC, "backend": "qemu", "timeout_seconds": 5, "options": {"run_dir": "/r"}}
    plain = from_dict(ExecRequest, body)
    assert plain == TypeAdapter(ExecRequest).validate_python(body)
    assert plain.command == ("true",)
    assert plain.options == LaunchOptions(run_dir=Path("/r"))
    assert to_dict(plain, drop_none=True) == body


def test_the_server_schema_publishes_the_rules() -> None:
    schema = TypeAdapter(RunRequest).json_schema()
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["command"]["minItems"] == 1
    assert props["command"]["items"]["pattern"] == "^[^\\x00]*$"
    timeout = props["timeout_seconds"]["anyOf"][0]
    assert (timeout["exclusiveMinimum"], timeout["maximum"]) == (0, 86400)


def test_requests_check_their_rules_when_built() -> None:
    with pytest.raises(InvalidRequest, match="not a string"):
        RunRequest("cr-1", "echo hi")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        RunRequest("", ("true",))
    with pytest.raises(InvalidRequest) as caught:
        LaunchRequest(Path("/repo"), options=LaunchOptions(launch_seconds=-1))
    assert caught.value.details["errors"][0]["loc"] == ["body", "options", "launch_seconds"]
    # Options alone are only a value: a service may be handed bad ones to judge.
    assert LaunchOptions(launch_seconds=-1).launch_seconds == -1
    assert RunRequest("cr-1", ["a", "b"]).command == ("a", "b")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        {"cwd": "/repo", "command": ["true"], "colour": "red"},  # unknown key
        {"command": ["true"]},  # missing key
        {"cwd": "/repo", "command": "true"},  # a string is not a list
        {"cwd": "/repo", "command": ["true"], "options": {"read_only_workspace": "yes"}},
        {"cwd": "/repo", "command": ["true"], "timeout_seconds": True},
        {"cwd": 7, "command": ["true"]},
    ],
)
def test_parsing_is_strict(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        from_dict(ExecRequest, body)
    with pytest.raises(ValidationError):
        TypeAdapter(ExecRequest).validate_python(body)


def test_results_round_trip_through_json() -> None:
    info = CleanroomInfo(
        "cr-1",
        "qemu",
        Path("/r"),
        Path("/r/cleanroom.yaml"),
        "ab",
        Path("/runs"),
        True,
        "t",
        ("x",),
    )
    report = DoctorReport.of(
        [DoctorCheck("a", "pass", "fine", {"n": 1}), DoctorCheck("b", "warn", "")]
    )
    for value in (RESULT, info, report):
        text = json.dumps(to_dict(value))
        assert from_dict(type(value), json.loads(text)) == value
    assert report.ok is True
    assert DoctorReport.of([DoctorCheck("a", "fail", "no")]).ok is False
    with pytest.raises(InvalidRequest):
        from_dict(DoctorCheck, {"name": "a", "status": "maybe", "reason": ""})
    with pytest.raises(InvalidRequest):
        from_dict(RunResult, {**to_dict(RESULT), "exit_code": 1.5})


def test_stream_lines_decode_to_the_events_encoded() -> None:
    chunker = Utf8Chunker()
    lines = [
        started_line(RunStarted("run-1", "cr-1", Path("/runs/run-1"))),
        output_line("stdout", chunker.feed("héllo".encode()[:2]) or ("", None)),
        output_line("stderr", Utf8Chunker().feed(b"\xff\x00") or ("", None)),
        b'{"type":"progress","percent":5}\n',  # a type this decoder does not know
        b"\n",
        exit_line(RESULT),
    ]
    decoder = EventDecoder()
    events = [e for e in (decoder.event(line) for line in lines) if e is not None]
    assert events == [
        RunStarted("run-1", "cr-1", Path("/runs/run-1")),
        RunOutput("stdout", b"h"),
        RunOutput("stderr", b"\xff\x00"),
        RunExit(RESULT),
    ]
    assert (decoder.run_id, decoder.finished) == ("run-1", True)


def test_an_error_line_raises_its_class_with_the_run_id() -> None:
    decoder = EventDecoder()
    decoder.event(started_line(RunStarted("run-9", "cr-1", Path("/r"))))
    with pytest.raises(RunTimeout) as caught:
        decoder.event(error_line(RunTimeout("too slow", details={"timeout_seconds": 1})))
    assert caught.value.details == {"timeout_seconds": 1, "run_id": "run-9"}
    assert decoder.finished


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"no": "type"}\n',
        b'{"type": "started", "run_id": "r"}\n',
        b'{"type": "started", "run_id": "r", "cleanroom_id": "c", "run_dir": "/r", "x": 1}\n',
        b'{"type": "stdout", "data": "%%%", "encoding": "base64"}\n',
        b'{"type": "exit", "run_id": "r"}\n',
        b'{"type": "error", "error": "boom"}\n',
    ],
)
def test_malformed_lines_are_cleanroom_errors(line: bytes) -> None:
    with pytest.raises(CleanroomError) as caught:
        EventDecoder().event(line)
    assert type(caught.value) is CleanroomError
    assert "malformed" in caught.value.message
