"""Every error class: its code, HTTP status and CLI exit status, pinned by one table.

The table below is the contract. It is checked against ``cleanroom.errors``,
against the README's table and the module docstring's tree, over HTTP against
the real service (agent-process guests) and through the ``cleanroom`` CLI as a
real process against that server. Errors a request can really cause here are
caused by one; the rest are raised by the service under a real request and
mapped by the real server and CLI.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_run import cli_env
from shared_server import shared_backend, shared_host, shared_service  # noqa: F401 - one server

from cleanroom import errors
from cleanroom.errors import CleanroomError, error_class_for_code
from cleanroom.service import Service
from cleanroom.testing import AgentProcessBackend

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("cleanroom"))

# class name -> (code, HTTP status, CLI exit status)
TABLE: dict[str, tuple[str, int, int]] = {
    "CleanroomError": ("internal_error", 500, 70),
    "InvalidRequest": ("invalid_request", 400, 64),
    "ConfigInvalid": ("config_invalid", 400, 78),
    "PolicyError": ("policy_invalid", 422, 65),
    "PolicyInvalid": ("policy_invalid", 422, 65),
    "PolicyConflict": ("policy_conflict", 409, 65),
    "PolicyNotFound": ("policy_not_found", 404, 66),
    "NotFound": ("not_found", 404, 66),
    "CleanroomNotFound": ("cleanroom_not_found", 404, 66),
    "RunNotFound": ("run_not_found", 404, 66),
    "BackendError": ("backend_unavailable", 503, 69),
    "BackendUnavailable": ("backend_unavailable", 503, 69),
    "BackendCapabilityMismatch": ("backend_capability_mismatch", 409, 69),
    "RuntimeLaunchFailed": ("runtime_launch_failed", 502, 70),
    "ImageUnavailable": ("image_unavailable", 503, 69),
    "RunTimeout": ("run_timeout", 504, 124),
    "RunCancelled": ("run_cancelled", 409, 130),
    "GuestAgentFailed": ("guest_agent_failed", 502, 70),
    "NetworkSetupFailed": ("network_setup_failed", 502, 70),
    "HostNotAllowed": ("host_not_allowed", 403, 77),
    "WorkspaceConflict": ("workspace_conflict", 409, 65),
    "ServerUnavailable": ("server_unavailable", 503, 69),
    "ServerNotTrusted": ("server_not_trusted", 503, 69),
    "Unauthenticated": ("unauthenticated", 401, 77),
    "TokenInvalid": ("token_invalid", 401, 77),
    "OutputLimitExceeded": ("output_limit", 413, 73),
    "WorkspaceTooLarge": ("workspace_too_large", 413, 65),
    "WorkspaceInvalid": ("workspace_invalid", 400, 65),
    "UploadTimeout": ("upload_timeout", 408, 75),
    "CapacityExhausted": ("capacity_exhausted", 503, 75),
}
BY_CODE = {code: (status, exit_) for code, status, exit_ in TABLE.values()}


def _classes() -> list[type[CleanroomError]]:
    found = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, CleanroomError)
    ]
    return sorted(found, key=lambda cls: cls.__name__)


# The table itself


def test_every_error_class_is_in_the_table() -> None:
    assert {cls.__name__ for cls in _classes()} == set(TABLE)
    assert set(errors.__all__) >= set(TABLE)


@pytest.mark.parametrize("cls", _classes(), ids=lambda cls: cls.__name__)
def test_class_attributes_match_the_table(cls: type[CleanroomError]) -> None:
    assert (cls.code, cls.status, cls.exit_code) == TABLE[cls.__name__]
    details = {"k": 1}
    exc = cls("boom", details=details)
    assert exc.to_dict() == {"error": {"code": cls.code, "message": "boom", "details": {"k": 1}}}
    assert str(exc) == f"{cls.code}: boom"
    assert exc.args == ("boom",)  # what repr() and pickling see
    assert exc.details is not details  # a copy: the caller's dict stays theirs
    assert cls("bare").details == {}


@pytest.mark.parametrize("cls", _classes(), ids=lambda cls: cls.__name__)
def test_code_maps_back_to_the_most_specific_class(cls: type[CleanroomError]) -> None:
    back = error_class_for_code(cls.code)
    assert issubclass(back, CleanroomError)
    assert (back.code, back.status, back.exit_code) == TABLE[cls.__name__]
    # A base class sharing its code with a subclass maps to that subclass.
    assert back.__module__ == "cleanroom.errors"
    assert all(
        sub.code != cls.code
        for sub in back.__subclasses__()
        if sub.__module__ == "cleanroom.errors"
    )


def test_shared_codes_map_to_the_leaf() -> None:
    # Private subclasses elsewhere (a stream decoder's, the host parser's) share
    # public codes; the client must raise the public class.
    assert error_class_for_code("policy_invalid") is errors.PolicyInvalid
    assert error_class_for_code("backend_unavailable") is errors.BackendUnavailable
    assert error_class_for_code("not_found") is errors.NotFound
    assert error_class_for_code("internal_error") is CleanroomError
    assert error_class_for_code("no_such_code") is CleanroomError


def _readme_rows() -> dict[str, tuple[int, int]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Error codes and CLI exit statuses", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[int, int]] = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\| (.+?) \| (\d{3}) \| (\d+) \|", line.strip())
        if match is None:
            continue
        for code in re.findall(r"`([a-z_]+)`", match.group(1)):
            assert code not in rows, f"{code} listed twice"
            rows[code] = (int(match.group(2)), int(match.group(3)))
    return rows


def test_readme_table_matches() -> None:
    assert _readme_rows() == BY_CODE


def test_module_docstring_tree_matches() -> None:
    doc = errors.__doc__ or ""
    tree = {
        m.group(1): (m.group(2), int(m.group(3)), int(m.group(4)))
        for m in re.finditer(r"(\w+)\s+([a-z_]+)\s+(\d{3})\s+(\d+)\s*$", doc, re.M)
    }
    documented = {name: row for name, row in TABLE.items() if name not in ("NotFound",)}
    # Bases without a code of their own are drawn without columns.
    for name in ("PolicyError", "BackendError"):
        documented.pop(name)
    assert tree == documented


# Over HTTP and through the CLI


@pytest.fixture
def sock(host: str) -> Path:
    return Path(host.removeprefix("unix://"))


@pytest.fixture
def http(sock: Path) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, base_url="http://cleanroom", timeout=60) as client:
        yield client


@pytest.fixture
def env(root: Path) -> dict[str, str]:
    return cli_env(root)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def assert_http(response: httpx.Response, code: str) -> dict[str, Any]:
    assert (response.status_code, response.json()["error"]["code"]) == (BY_CODE[code][0], code)
    error: dict[str, Any] = response.json()["error"]
    return error


def assert_cli(done: subprocess.CompletedProcess[str], code: str) -> None:
    assert done.returncode == BY_CODE[code][1], done.stderr
    assert f"error[{code}]: " in done.stderr


@pytest.mark.parametrize(
    "cls", [c for c in _classes() if c is not errors.ServerUnavailable], ids=lambda c: c.__name__
)
def test_every_class_raised_by_the_service_maps_over_http_and_cli(
    cls: type[CleanroomError],
    http: httpx.Client,
    host: str,
    env: dict[str, str],
    service: Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> list[Any]:
        raise cls("raised by the test", details={"probe": True})

    monkeypatch.setattr(service, "list_cleanrooms", broken)
    error = assert_http(http.get("/v1/cleanrooms"), cls.code)
    assert error == {"code": cls.code, "message": "raised by the test", "details": {"probe": True}}
    assert_cli(cli("ls", "--host", host, env=env), cls.code)


def _policy(repo: Path, text: str) -> Path:
    (repo / "cleanroom.yaml").write_text(text)
    return repo


def _exec_body(cwd: Path, command: list[str], **extra: Any) -> dict[str, Any]:
    return {"cwd": str(cwd), "command": command, **extra}


def test_invalid_request(http: httpx.Client, host: str, env: dict[str, str], repo: Path) -> None:
    response = http.post("/v1/exec", json=_exec_body(repo, ["true"], backend="warp-drive"))
    assert assert_http(response, "invalid_request")["details"]["backend"] == "warp-drive"
    done = cli(
        "exec", "--host", host, "-c", str(repo), "--backend", "warp-drive", "--", "true", env=env
    )
    assert_cli(done, "invalid_request")


def test_policy_invalid(http: httpx.Client, host: str, env: dict[str, str], repo: Path) -> None:
    _policy(repo, "version: 1\nsneaky: yes\n")
    assert_http(http.post("/v1/exec", json=_exec_body(repo, ["true"])), "policy_invalid")
    assert_cli(
        cli("exec", "--host", host, "-c", str(repo), "--", "true", env=env), "policy_invalid"
    )


def test_policy_not_found(http: httpx.Client, host: str, env: dict[str, str], root: Path) -> None:
    empty = root / "empty"
    empty.mkdir()
    assert_http(http.post("/v1/exec", json=_exec_body(empty, ["true"])), "policy_not_found")
    done = cli("exec", "--host", host, "-c", str(empty), "--", "true", env=env)
    assert_cli(done, "policy_not_found")


def test_lookups_not_found(http: httpx.Client, host: str, env: dict[str, str]) -> None:
    response = http.post(
        "/v1/cleanrooms/run", json={"cleanroom_id": "cr-nope", "command": ["true"]}
    )
    assert_http(response, "cleanroom_not_found")
    assert_cli(cli("run", "--host", host, "cr-nope", "--", "true", env=env), "cleanroom_not_found")
    assert_http(http.get("/v1/runs/run-nope"), "run_not_found")
    assert_cli(cli("status", "--host", host, "--run-id", "run-nope", env=env), "run_not_found")
    assert_http(http.get("/v1/no-such-endpoint"), "not_found")


def test_backend_unavailable(
    http: httpx.Client, host: str, env: dict[str, str], repo: Path
) -> None:
    response = http.post("/v1/exec", json=_exec_body(repo, ["true"], backend="firecracker"))
    assert_http(response, "backend_unavailable")
    done = cli(
        "exec", "--host", host, "-c", str(repo), "--backend", "firecracker", "--", "true", env=env
    )
    assert_cli(done, "backend_unavailable")


def test_backend_capability_mismatch(
    http: httpx.Client, host: str, env: dict[str, str], repo: Path
) -> None:
    # The agent-process backend cannot enforce egress rules: a policy that allows
    # any host is refused at launch rather than run unfiltered.
    _policy(
        repo,
        "version: 1\nsandbox:\n  network:\n    allow:\n"
        "      - host: 203.0.113.7\n        ports: [443]\n",
    )
    error = assert_http(
        http.post("/v1/exec", json=_exec_body(repo, ["true"])), "backend_capability_mismatch"
    )
    assert "network_default_deny" in error["details"]["missing"]
    done = cli("exec", "--host", host, "-c", str(repo), "--", "true", env=env)
    assert_cli(done, "backend_capability_mismatch")


def test_runtime_launch_failed(
    http: httpx.Client,
    host: str,
    env: dict[str, str],
    repo: Path,
    backend: AgentProcessBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backend, "fail_launch", True)  # the backend is the module's
    assert_http(http.post("/v1/exec", json=_exec_body(repo, ["true"])), "runtime_launch_failed")
    done = cli("exec", "--host", host, "-c", str(repo), "--", "true", env=env)
    assert_cli(done, "runtime_launch_failed")


def test_run_timeout(http: httpx.Client, host: str, env: dict[str, str], repo: Path) -> None:
    response = http.post("/v1/exec", json=_exec_body(repo, ["sleep", "30"], timeout_seconds=0.5))
    assert assert_http(response, "run_timeout")["details"]["run_id"].startswith("run-")
    done = cli(
        "exec", "--host", host, "-c", str(repo), "--timeout", "0.5", "--", "sleep", "30", env=env
    )
    assert_cli(done, "run_timeout")


def test_guest_agent_failed(http: httpx.Client, host: str, env: dict[str, str], repo: Path) -> None:
    # The command kills its parent, the agent: the guest is gone mid-run.
    command = ["sh", "-c", "kill -KILL $PPID; sleep 5"]
    assert_http(http.post("/v1/exec", json=_exec_body(repo, command)), "guest_agent_failed")
    done = cli("exec", "--host", host, "-c", str(repo), "--", *command, env=env)
    assert_cli(done, "guest_agent_failed")


def _wait_for(path: Path, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert alive(), "the run ended before it started its command"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_run_cancelled(
    http: httpx.Client, host: str, env: dict[str, str], repo: Path, root: Path
) -> None:
    # Terminating a context cancels its running command: the run answers 409.
    cid = http.post("/v1/cleanrooms/launch", json={"cwd": str(repo)}).json()["cleanroom_id"]
    marker = root / "http-started"
    answer: list[httpx.Response] = []
    command = ["sh", "-c", f"touch {marker}; exec sleep 60"]
    runner = threading.Thread(
        target=lambda: answer.append(
            http.post("/v1/cleanrooms/run", json={"cleanroom_id": cid, "command": command})
        )
    )
    runner.start()
    _wait_for(marker, runner.is_alive)
    assert http.post("/v1/cleanrooms/terminate", json={"cleanroom_id": cid}).status_code == 200
    runner.join(30)
    assert not runner.is_alive()
    assert_http(answer[0], "run_cancelled")

    cid = http.post("/v1/cleanrooms/launch", json={"cwd": str(repo)}).json()["cleanroom_id"]
    marker = root / "cli-started"
    proc = subprocess.Popen(
        [CLI, "run", "--host", host, cid, "--", "sh", "-c", f"touch {marker}; exec sleep 60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(marker, lambda: proc.poll() is None)
        assert http.post("/v1/cleanrooms/terminate", json={"cleanroom_id": cid}).status_code == 200
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_cli(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), "run_cancelled")


def test_internal_error_hides_the_cause(
    http: httpx.Client,
    host: str,
    env: dict[str, str],
    service: Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> list[Any]:
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(service, "list_cleanrooms", broken)
    error = assert_http(http.get("/v1/cleanrooms"), "internal_error")
    assert "secret" not in str(error)
    done = cli("ls", "--host", host, env=env)
    assert_cli(done, "internal_error")
    assert "secret" not in done.stderr


def test_server_unavailable(env: dict[str, str], root: Path, repo: Path) -> None:
    nowhere = f"unix://{root}/nobody.sock"
    assert_cli(cli("ls", "--host", nowhere, env=env), "server_unavailable")
    done = cli("exec", "--no-autostart", "--host", nowhere, "-c", str(repo), "--", "true", env=env)
    assert_cli(done, "server_unavailable")


def test_config_invalid(env: dict[str, str], root: Path) -> None:
    config = Path(env["XDG_CONFIG_HOME"]) / "cleanroom"
    config.mkdir(parents=True)
    (config / "config.yaml").write_text("no_such_setting: 1\n")
    done = cli("serve", "--listen", f"unix://{root}/never.sock", env=env)
    assert_cli(done, "config_invalid")
    assert not (root / "never.sock").exists()
