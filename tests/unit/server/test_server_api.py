"""The HTTP API over a real unix socket: every endpoint and every error body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from shared_server import SharedServer, shared_service  # noqa: F401 - one server

from cleanroom import paths
from cleanroom.service import Service


@pytest.fixture
def http(module_server: SharedServer) -> Iterator[httpx.Client]:
    """A client of the module's server (the tests here need a server, not a fresh one)."""
    transport = httpx.HTTPTransport(uds=module_server.host.removeprefix("unix://"))
    with httpx.Client(transport=transport, base_url="http://cleanroom", timeout=30) as client:
        yield client


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    error: dict[str, Any] = body["error"]
    return error


def test_healthz(http: httpx.Client) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "version": "0.1.0", "warm_ready": 0, "warm_size": 0}


def test_launch_run_record_list_terminate(http: httpx.Client, repo: Path) -> None:
    launched = http.post("/v1/cleanrooms/launch", json={"cwd": str(repo)})
    assert launched.status_code == 200
    info = launched.json()
    assert set(info) == {
        "cleanroom_id",
        "backend",
        "policy_source",
        "policy_hash",
        "run_dir_root",
        "image",
        "resources",
        "isolation",
    }
    assert info["isolation"] == "qemu-tcg"  # what the agent-process backend reports
    assert info["image"] is None  # the built-in image
    assert info["resources"]["disk_mib"] == 16384
    assert info["backend"] == "qemu"  # the agent-process backend stands in for qemu
    assert info["policy_source"] == str(repo / "cleanroom.yaml")
    cid = info["cleanroom_id"]

    ran = http.post(
        "/v1/cleanrooms/run",
        json={"cleanroom_id": cid, "command": ["sh", "-c", "echo out; echo err >&2; exit 3"]},
    )
    assert ran.status_code == 200
    result = ran.json()
    assert result["exit_code"] == 3
    assert result["stdout"] == "out\n"
    assert result["stderr"] == "err\n"
    assert result["cleanroom_id"] == cid
    assert result["signal"] is None
    assert result["stdout_truncated"] is False
    assert Path(result["run_dir"]).is_dir()
    assert Path(result["plan_path"]).is_file()

    record = http.get(f"/v1/runs/{result['run_id']}")
    assert record.status_code == 200
    assert record.json()["exit_code"] == 3
    assert record.json()["run_id"] == result["run_id"]

    listed = http.get("/v1/cleanrooms").json()["cleanrooms"]
    assert [c["cleanroom_id"] for c in listed] == [cid]
    assert listed[0]["runs"] == [result["run_id"]]

    for _ in range(2):  # idempotent
        done = http.post("/v1/cleanrooms/terminate", json={"cleanroom_id": cid})
        assert done.status_code == 200
        assert done.json() == {"terminated": True}
    assert http.get("/v1/cleanrooms").json() == {"cleanrooms": []}


def test_exec_with_options(http: httpx.Client, repo: Path, short_tmp: Path) -> None:
    run_root = paths.state_dir() / "custom-runs"
    response = http.post(
        "/v1/exec",
        json={
            "cwd": str(repo),
            "command": ["sh", "-c", "kill -TERM $$"],
            "backend": "qemu",
            "options": {"run_dir": str(run_root), "read_only_workspace": True, "launch_seconds": 5},
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["exit_code"] == 128 + 15
    assert body["signal"] == "SIGTERM"
    assert Path(body["run_dir"]).parent == run_root
    assert http.get("/v1/cleanrooms").json() == {"cleanrooms": []}  # exec terminated it


def test_doctor(http: httpx.Client) -> None:
    response = http.get("/v1/doctor")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert {c["status"] for c in body["checks"]} == {"pass", "warn"}


def test_malformed_json(http: httpx.Client) -> None:
    response = http.post(
        "/v1/exec", content=b'{"cwd": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert error["details"]["errors"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({"command": ["true"]}, ["body", "cwd"], "missing"),
        ({"cwd": "/x", "command": "true"}, ["body", "command"], "list_type"),
        ({"cwd": "/x", "command": ["true"], "extra": 1}, ["body", "extra"], "extra_forbidden"),
        ({"cwd": "/x", "command": []}, ["body", "command"], "too_short"),
        (
            {"cwd": "/x", "command": ["a\u0000b"]},
            ["body", "command", "0"],
            "string_pattern_mismatch",
        ),
        (
            {"cwd": "/x", "command": ["true"], "options": {"read_only_workspace": "yes"}},
            ["body", "options", "read_only_workspace"],
            "bool_type",
        ),
        (
            {"cwd": "/x", "command": ["true"], "options": {"colour": "red"}},
            ["body", "options", "colour"],
            "extra_forbidden",
        ),
    ],
)
def test_bad_fields_are_invalid_request(
    http: httpx.Client, body: dict[str, Any], loc: list[str], kind: str
) -> None:
    response = http.post("/v1/exec", json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert {"loc": loc, "type": kind} in [
        {"loc": e["loc"], "type": e["type"]} for e in error["details"]["errors"]
    ]


def test_not_json_content_type(http: httpx.Client) -> None:
    response = http.post("/v1/cleanrooms/terminate", content=b'{"cleanroom_id": "x"}')
    assert response.status_code == 400
    assert "Content-Type: application/json" in error_of(response)["message"]


def test_relative_cwd(http: httpx.Client) -> None:
    response = http.post("/v1/cleanrooms/launch", json={"cwd": "repo"})
    assert response.status_code == 400
    assert error_of(response)["details"]["errors"][0]["loc"] == ["body", "cwd"]


def test_oversized_body(http: httpx.Client) -> None:
    big = {"cleanroom_id": "x", "command": ["echo", "a" * (1024 * 1024 + 1)]}
    response = http.post("/v1/cleanrooms/run", json=big)
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert error["details"]["limit_bytes"] == 1024 * 1024


def test_oversized_chunked_body(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"cleanroom_id": "x", "command": ["'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"]}'

    response = http.post(
        "/v1/cleanrooms/run", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        (
            "POST",
            "/v1/cleanrooms/run",
            {"cleanroom_id": "cr-nope", "command": ["true"]},
            404,
            "cleanroom_not_found",
        ),
        (
            "POST",
            "/v1/cleanrooms/terminate",
            {"cleanroom_id": "cr-nope"},
            404,
            "cleanroom_not_found",
        ),
        ("GET", "/v1/runs/run-nope", None, 404, "run_not_found"),
        ("GET", "/v1/no-such-endpoint", None, 404, "not_found"),
        ("DELETE", "/v1/cleanrooms", None, 405, "invalid_request"),
    ],
)
def test_lookup_errors(
    http: httpx.Client, method: str, path: str, body: Any, status: int, code: str
) -> None:
    response = http.request(method, path, json=body)
    assert response.status_code == status
    assert error_of(response)["code"] == code


@pytest.mark.parametrize(
    ("backend", "status", "code"),
    [("warp-drive", 400, "invalid_request"), ("firecracker", 503, "backend_unavailable")],
)
def test_backend_errors(
    http: httpx.Client, repo: Path, backend: str, status: int, code: str
) -> None:
    response = http.post("/v1/cleanrooms/launch", json={"cwd": str(repo), "backend": backend})
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    assert error["details"]["backend"] == backend


def test_policy_errors(http: httpx.Client, repo: Path, short_tmp: Path) -> None:
    response = http.post("/v1/exec", json={"cwd": str(short_tmp), "command": ["true"]})
    assert response.status_code == 404
    assert error_of(response)["code"] == "policy_not_found"

    (repo / "cleanroom.yaml").write_text("allow: everything\nsneaky: yes\n")
    response = http.post("/v1/cleanrooms/launch", json={"cwd": str(repo)})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "policy_invalid"
    problems = error["details"]["problems"]
    assert [p for p in problems if "unknown key" in p] == [
        "cleanroom.yaml:1:1: allow: unknown key 'allow' (expected one of: sandbox, version)",
        "cleanroom.yaml:2:1: sneaky: unknown key 'sneaky' (expected one of: sandbox, version)",
    ]


def test_run_timeout(http: httpx.Client, repo: Path) -> None:
    launched = http.post("/v1/cleanrooms/launch", json={"cwd": str(repo)}).json()
    response = http.post(
        "/v1/cleanrooms/run",
        json={
            "cleanroom_id": launched["cleanroom_id"],
            "command": ["sleep", "30"],
            "timeout_seconds": 0.5,
        },
    )
    assert response.status_code == 504
    assert error_of(response)["code"] == "run_timeout"


def test_unexpected_service_error_is_generic_500(
    http: httpx.Client, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[Any]:
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(service, "list_cleanrooms", broken)
    response = http.get("/v1/cleanrooms")
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error"
    assert "secret" not in json.dumps(error)


def test_run_timeout_seconds(http: httpx.Client, repo: Path) -> None:
    slow = http.post(
        "/v1/exec",
        json={"cwd": str(repo), "command": ["sleep", "30"], "timeout_seconds": 0.5},
    )
    assert slow.status_code == 504
    assert error_of(slow)["code"] == "run_timeout"
    quick = http.post(
        "/v1/exec", json={"cwd": str(repo), "command": ["true"], "timeout_seconds": 30}
    )
    assert quick.status_code == 200
    assert quick.json()["exit_code"] == 0
    for bad in (0, -1, "5", 86401):
        response = http.post(
            "/v1/exec", json={"cwd": str(repo), "command": ["true"], "timeout_seconds": bad}
        )
        assert response.status_code == 400, bad
        assert error_of(response)["code"] == "invalid_request"
