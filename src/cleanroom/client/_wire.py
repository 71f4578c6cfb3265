"""What the sync and async clients share: endpoints, request bodies, result parsing, errors."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cleanroom.errors import CleanroomError, InvalidRequest, ServerUnavailable, error_class_for_code
from cleanroom.paths import default_socket_path
from cleanroom.service.types import (
    CleanroomInfo,
    DoctorCheck,
    LaunchOptions,
    RunEvent,
    RunExit,
    RunOutput,
    RunResult,
    RunStarted,
)

__all__ = [
    "HOST_ENV",
    "NDJSON",
    "DoctorReport",
    "Endpoint",
    "Health",
    "LaunchResult",
    "resolve_endpoint",
]

HOST_ENV = "CLEANROOM_HOST"
NDJSON = "application/x-ndjson"
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Endpoint:
    """A resolved server address: the HTTP base URL, and the unix socket if any."""

    url: str
    """As given (``unix:///path``, ``tcp://h:p`` or ``http://h:p``)."""
    base_url: str
    uds: Path | None = None
    is_default: bool = False
    """True when no host was given anywhere (the default local socket)."""

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (``https://`` endpoints only)."""
        return self.base_url.startswith("https://")


def resolve_endpoint(host: str | None = None) -> Endpoint:
    """Explicit ``host`` > ``$CLEANROOM_HOST`` > the default unix socket.

    Accepts ``unix:///abs/path``, ``tcp://HOST:PORT`` and ``http(s)://HOST:PORT``;
    raises ``InvalidRequest`` for anything else.
    """
    chosen = host or os.environ.get(HOST_ENV) or None
    if chosen is None:
        path = default_socket_path()
        return Endpoint(
            url=f"unix://{path}", base_url="http://cleanroom", uds=path, is_default=True
        )
    if chosen.startswith("unix://"):
        path = Path(chosen[len("unix://") :])
        if not path.is_absolute():
            raise InvalidRequest(f"unix socket path must be absolute: {chosen!r}")
        return Endpoint(url=chosen, base_url="http://cleanroom", uds=path)
    if chosen.startswith("tcp://"):
        return Endpoint(url=chosen, base_url="http://" + chosen[len("tcp://") :].rstrip("/"))
    if chosen.startswith(("http://", "https://")):
        return Endpoint(url=chosen, base_url=chosen.rstrip("/"))
    raise InvalidRequest(
        f"unsupported server address {chosen!r} (use unix:///path, tcp://HOST:PORT or http://...)"
    )


@dataclass(frozen=True)
class LaunchResult:
    """A launched context."""

    cleanroom_id: str
    backend: str
    policy_source: Path
    policy_hash: str
    run_dir_root: Path


@dataclass(frozen=True)
class Health:
    """``GET /healthz``."""

    ok: bool
    version: str


@dataclass(frozen=True)
class DoctorReport:
    """The server's readiness checks; ``ok`` is false when any failed."""

    ok: bool
    checks: tuple[DoctorCheck, ...]


def options_body(options: LaunchOptions | None) -> dict[str, Any] | None:
    """The ``options`` object of a launch or exec request."""
    if options is None:
        return None
    body: dict[str, Any] = {}
    if options.run_dir is not None:
        body["run_dir"] = str(Path(options.run_dir).absolute())
    if options.read_only_workspace is not None:
        body["read_only_workspace"] = options.read_only_workspace
    if options.launch_seconds is not None:
        body["launch_seconds"] = options.launch_seconds
    return body


def launch_body(
    cwd: Path | str, backend: str | None, options: LaunchOptions | None
) -> dict[str, Any]:
    """A launch request (``cwd`` made absolute on the client's side)."""
    body: dict[str, Any] = {"cwd": str(Path(cwd).absolute())}
    if backend is not None:
        body["backend"] = backend
    opts = options_body(options)
    if opts is not None:
        body["options"] = opts
    return body


def command_list(command: Sequence[str]) -> list[str]:
    """``command`` as a list, refusing a bare string (which would be split into letters)."""
    if isinstance(command, str):
        raise InvalidRequest("command must be a sequence of arguments, not a string")
    return list(command)


def run_body(
    cleanroom_id: str, command: Sequence[str], timeout: float | None = None
) -> dict[str, Any]:
    """A run request (``POST /v1/cleanrooms/run``)."""
    body: dict[str, Any] = {"cleanroom_id": cleanroom_id, "command": command_list(command)}
    if timeout is not None:
        body["timeout_seconds"] = timeout
    return body


def exec_body(
    cwd: Path | str,
    command: Sequence[str],
    backend: str | None,
    options: LaunchOptions | None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """An exec request (``POST /v1/exec``): a launch request plus the command."""
    body = {**launch_body(cwd, backend, options), "command": command_list(command)}
    if timeout is not None:
        body["timeout_seconds"] = timeout
    return body


def run_record_path(run_id: str) -> str:
    """The URL path of a run's record (the id quoted as one path segment)."""
    return f"/v1/runs/{quote(run_id, safe='')}"


def connection_error(endpoint: Endpoint, kind: str, cause: str) -> ServerUnavailable:
    """The error for an unreachable (``kind`` ``connect``), silent (``timeout``) or
    vanished (anything else) server; ``cause`` says what the transport saw."""
    if kind == "connect":
        message = f"no cleanroom server answers at {endpoint.url}"
    elif kind == "timeout":
        message = f"the server at {endpoint.url} did not answer in time"
    else:
        message = f"the connection to the server at {endpoint.url} was lost"
    return ServerUnavailable(
        message,
        details={
            "address": endpoint.url,
            "cause": cause,
            "hint": "start one with `cleanroom serve`",
        },
    )


def precheck(endpoint: Endpoint) -> None:
    """Fail fast (``ServerUnavailable``) when the endpoint's unix socket does not exist.

    Besides being quicker, this avoids a socket leak in httpcore (the asyncio
    client's transport), which does not close its unix socket when connecting fails.
    """
    if endpoint.uds is not None and not endpoint.uds.exists():
        raise connection_error(endpoint, "connect", f"{endpoint.uds} does not exist")


def error_from_body(status: int, content: bytes) -> CleanroomError:
    """The error class the server raised (by code), with its details."""
    try:
        error = json.loads(content)["error"]
        code, message = str(error["code"]), str(error["message"])
        details = error.get("details") or {}
    except (ValueError, KeyError, TypeError):
        snippet = content[:200].decode("utf-8", "replace")
        return CleanroomError(f"unexpected response from server (HTTP {status}): {snippet}")
    return error_class_for_code(code)(message, details=dict(details))


def check(status: int, content: bytes) -> dict[str, Any]:
    """The JSON body of a successful response; raises the server's error otherwise."""
    if status >= 400:
        raise error_from_body(status, content)
    try:
        body = json.loads(content)
    except ValueError as exc:
        raise CleanroomError("the server sent a response that is not JSON") from exc
    if not isinstance(body, dict):
        raise CleanroomError("the server sent an unexpected JSON response")
    return body


def parse_health(body: dict[str, Any]) -> Health:
    """A ``Health`` from ``GET /healthz``."""
    return Health(ok=bool(body["ok"]), version=str(body["version"]))


def parse_launch(body: dict[str, Any]) -> LaunchResult:
    """A ``LaunchResult`` from a launch response."""
    return LaunchResult(
        cleanroom_id=body["cleanroom_id"],
        backend=body["backend"],
        policy_source=Path(body["policy_source"]),
        policy_hash=body["policy_hash"],
        run_dir_root=Path(body["run_dir_root"]),
    )


def parse_run(body: dict[str, Any]) -> RunResult:
    """A ``RunResult`` from a run/exec response or an ``exit`` event."""
    return RunResult(
        run_id=body["run_id"],
        cleanroom_id=body["cleanroom_id"],
        exit_code=int(body["exit_code"]),
        stdout=body["stdout"],
        stderr=body["stderr"],
        run_dir=Path(body["run_dir"]),
        plan_path=Path(body["plan_path"]),
        signal=body.get("signal"),
        stdout_truncated=bool(body.get("stdout_truncated", False)),
        stderr_truncated=bool(body.get("stderr_truncated", False)),
    )


def parse_cleanroom(body: dict[str, Any]) -> CleanroomInfo:
    """A ``CleanroomInfo`` from one entry of ``GET /v1/cleanrooms``."""
    return CleanroomInfo(
        cleanroom_id=body["cleanroom_id"],
        backend=body["backend"],
        cwd=Path(body["cwd"]),
        policy_source=Path(body["policy_source"]),
        policy_hash=body["policy_hash"],
        run_dir_root=Path(body["run_dir_root"]),
        read_only_workspace=bool(body["read_only_workspace"]),
        created_at=body["created_at"],
        runs=tuple(body.get("runs", ())),
    )


def parse_doctor(body: dict[str, Any]) -> DoctorReport:
    """A ``DoctorReport`` from ``GET /v1/doctor``."""
    return DoctorReport(
        ok=bool(body["ok"]),
        checks=tuple(
            DoctorCheck(c["name"], c["status"], c["reason"], dict(c.get("details") or {}))
            for c in body["checks"]
        ),
    )


class StreamState:
    """Decodes one NDJSON run stream line by line into run events."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.finished = False

    def event(self, line: str | bytes) -> RunEvent | None:
        """The event on ``line`` (``None`` for blank lines); raises the ``error`` event."""
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
            kind = obj["type"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CleanroomError(f"malformed stream line from server: {line[:200]!r}") from exc
        try:
            return self._decode(kind, obj)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise CleanroomError(f"malformed {kind!r} event from server") from exc

    def _decode(self, kind: str, obj: dict[str, Any]) -> RunEvent | None:
        if kind == "started":
            self.run_id = obj["run_id"]
            return RunStarted(obj["run_id"], obj["cleanroom_id"], Path(obj["run_dir"]))
        if kind in ("stdout", "stderr"):
            raw = obj["data"]
            data = base64.b64decode(raw) if obj.get("encoding") == "base64" else raw.encode()
            return RunOutput("stdout" if kind == "stdout" else "stderr", data)
        if kind == "exit":
            self.finished = True
            return RunExit(parse_run(obj))
        if kind == "error":
            self.finished = True
            error = obj["error"]
            details = dict(error.get("details") or {})
            if self.run_id is not None:
                details.setdefault("run_id", self.run_id)
            raise error_class_for_code(error["code"])(error["message"], details=details)
        return None  # unknown event types are skipped: the server may add new ones

    def ended(self, endpoint: Endpoint) -> None:
        """Called at end of stream: raises if neither ``exit`` nor ``error`` arrived."""
        if not self.finished:
            details = {"address": endpoint.url}
            if self.run_id is not None:
                details["run_id"] = self.run_id
            raise ServerUnavailable(
                "the server closed the stream before the run ended", details=details
            )
