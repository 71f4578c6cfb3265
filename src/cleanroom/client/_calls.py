"""The client's one interface: every API call as data (what to send, how to read the answer).

Both clients build their calls here and differ only in how they move bytes
(``_sync`` on its own small HTTP transport, ``_async`` on httpx). Request
bodies are the wire models of :mod:`cleanroom.models` (their rules are checked
before anything is sent); answers are parsed strictly into those models.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote

from cleanroom.client._endpoint import Endpoint, run_record_path
from cleanroom.errors import CleanroomError, InvalidRequest, ServerUnavailable, error_class_for_code
from cleanroom.events import EventDecoder
from cleanroom.models import (
    Applied,
    CleanroomInfo,
    CleanroomList,
    DoctorReport,
    ExecRequest,
    Health,
    LaunchOptions,
    LaunchRequest,
    LaunchResult,
    RunRequest,
    RunResult,
    TerminateRequest,
    WorkspaceUploaded,
    encode_stdin,
    from_dict,
    to_dict,
)

__all__ = [
    "Call",
    "Inputs",
    "answer",
    "error_from_body",
    "exec_call",
    "json_object",
    "remote_workspace",
    "stream_ended",
    "upload_workspace",
    "with_workspace",
]

T = TypeVar("T")
Body = dict[str, Any]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the parser of its successful answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    """Parses the answer: its JSON object, or its bytes for a ``raw`` call."""
    body: Body | None = None
    long: bool = False
    """True for calls that may take minutes (no read timeout)."""
    raw: bool = False
    """The answer is bytes (a patch, a file), not JSON."""
    upload: Path | None = None
    """A launch's or exec's local workspace directory: a client whose server is not
    on a unix socket uploads it first and names it by ``workspace_id`` (see
    :func:`with_workspace`)."""
    tar: Path | None = None
    """The body is this local directory as a tar stream (``POST /v1/workspaces``)."""


def _options(options: LaunchOptions | None) -> LaunchOptions | None:
    """``options`` with ``run_dir`` made absolute on the client's side."""
    if options is None or options.run_dir is None:
        return options
    return replace(options, run_dir=Path(options.run_dir).absolute())


def health() -> Call[Health]:
    """``GET /healthz``."""
    return Call("GET", "/healthz", lambda body: from_dict(Health, body))


def launch(
    cwd: Path | str, *, backend: str | None = None, options: LaunchOptions | None = None
) -> Call[LaunchResult]:
    """Launch a context from ``cwd``'s policy."""
    request = LaunchRequest(Path(cwd).absolute(), backend, _options(options))
    return Call(
        "POST",
        "/v1/cleanrooms/launch",
        lambda body: from_dict(LaunchResult, body),
        to_dict(request, drop_none=True),
        long=True,
        upload=request.cwd,
    )


def _argv(command: Sequence[str]) -> tuple[str, ...]:
    # The request checks the argv (a bare string is refused there, not split).
    return cast("tuple[str, ...]", command)


def _result(body: Body) -> RunResult:
    return from_dict(RunResult, body)


@dataclass(frozen=True)
class Inputs:
    """What a run takes besides its command: environment, stdin, artifact globs."""

    env: Mapping[str, str] | None = None
    stdin: bytes | None = None
    artifacts: Sequence[str] | None = None

    def fields(self) -> dict[str, Any]:
        """The request fields (checked by the request's rules when it is built)."""
        return {
            "env": None if self.env is None else dict(self.env),
            "stdin_base64": encode_stdin(self.stdin),
            "artifacts": None if self.artifacts is None else tuple(self.artifacts),
        }


def run(
    cleanroom_id: str,
    command: Sequence[str],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    artifacts: Sequence[str] | None = None,
) -> Call[RunResult]:
    """Run ``command`` (argv) in a fresh guest of the context and wait for it.

    ``env``: variables for the command (values are never recorded);
    ``stdin``: its standard input, at most 512 KiB, then EOF (default: empty);
    ``artifacts``: relative globs of workspace files to keep (see
    :meth:`run_artifact`). The result counts the workspace's ``changes``
    (see :meth:`run_diff`, :meth:`apply_changes`).
    """
    inputs = Inputs(env, stdin, artifacts)
    request = RunRequest(cleanroom_id, _argv(command), timeout, **inputs.fields())
    return Call("POST", "/v1/cleanrooms/run", _result, to_dict(request, drop_none=True), long=True)


def exec_(
    cwd: Path | str,
    command: Sequence[str],
    backend: str | None = None,
    options: LaunchOptions | None = None,
    timeout: float | None = None,
    inputs: Inputs = Inputs(),
) -> Call[RunResult]:
    """Launch, run once, terminate (``POST /v1/exec``)."""
    argv = _argv(command)
    request = ExecRequest(
        Path(cwd).absolute(), argv, backend, _options(options), timeout, **inputs.fields()
    )
    body = to_dict(request, drop_none=True)
    return Call("POST", "/v1/exec", _result, body, long=True, upload=request.cwd)


def exec_call(
    cwd: Path | str,
    command: Sequence[str],
    *,
    backend: str | None = None,
    options: LaunchOptions | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    artifacts: Sequence[str] | None = None,
) -> Call[RunResult]:
    """Launch, run once, terminate (``env``, ``stdin``, ``artifacts``: as :meth:`run`)."""
    inputs = Inputs(env, stdin, artifacts)
    return exec_(cwd, command, backend, options, timeout, inputs)


def upload_workspace(directory: Path | str) -> Call[WorkspaceUploaded]:
    """Upload ``directory`` as a workspace (``POST /v1/workspaces``) for one later
    launch or exec on a remote server. ``launch``, ``exec`` and their streaming
    forms do this themselves when the server is not on a unix socket."""
    return Call(
        "POST",
        "/v1/workspaces",
        lambda body: from_dict(WorkspaceUploaded, body),
        long=True,
        tar=Path(directory).absolute(),
    )


def remote_workspace(call: Call[Any], uds: Path | None) -> Path | None:
    """The directory to upload before ``call``: its workspace, when the server is
    not on a unix socket (``uds``; a server there shares this machine's files)."""
    return call.upload if uds is None else None


def with_workspace(call: Call[T], workspace_id: str) -> Call[T]:
    """``call`` naming the uploaded workspace ``workspace_id`` (nothing left to upload)."""
    return replace(call, body={**(call.body or {}), "workspace_id": workspace_id}, upload=None)


def run_diff(run_id: str) -> Call[bytes]:
    """The run's workspace changes as a git-format binary patch (``git apply`` takes it;
    empty when nothing changed). Raises ``InvalidRequest`` when the run has no
    complete change set (read-only workspace, a cap hit)."""
    return Call("GET", run_record_path(run_id) + "/diff", bytes, raw=True)


def run_artifact(run_id: str, path: str) -> Call[bytes]:
    """The bytes of the run's artifact ``path`` (as listed in ``RunResult.artifacts``)."""
    where = f"{run_record_path(run_id)}/artifacts/{quote(path, safe='/')}"
    return Call("GET", where, bytes, raw=True, long=True)


def apply_changes(run_id: str) -> Call[Applied]:
    """Apply the run's workspace changes to the host directory it was copied from.

    Raises ``WorkspaceConflict`` (nothing written) when a changed host path
    was modified since the copy.
    """
    path = run_record_path(run_id) + "/apply"
    return Call("POST", path, lambda body: from_dict(Applied, body), long=True)


def terminate(cleanroom_id: str) -> Call[None]:
    """Terminate the context (idempotent)."""
    body = to_dict(TerminateRequest(cleanroom_id))
    return Call("POST", "/v1/cleanrooms/terminate", lambda _: None, body, long=True)


def list_cleanrooms() -> Call[list[CleanroomInfo]]:
    """The live contexts, oldest first."""
    return Call(
        "GET", "/v1/cleanrooms", lambda body: list(from_dict(CleanroomList, body).cleanrooms)
    )


def run_record(run_id: str) -> Call[Body]:
    """The run's record (``run-observability.json``)."""
    return Call("GET", run_record_path(run_id), lambda body: body)


def doctor() -> Call[DoctorReport]:
    """The server's readiness checks."""
    return Call("GET", "/v1/doctor", lambda body: from_dict(DoctorReport, body), long=True)


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


def json_object(content: str | bytes, what: str, unexpected: str) -> dict[str, Any]:
    """The JSON object the server sent as ``content``; ``CleanroomError`` saying the
    server sent ``what`` that is not JSON, or sent ``unexpected`` (not an object)."""
    try:
        body = json.loads(content)
    except ValueError as exc:
        raise CleanroomError(f"the server sent {what} that is not JSON") from exc
    if not isinstance(body, dict):
        raise CleanroomError(f"the server sent {unexpected}")
    return body


def answer(call: Call[T], status: int, content: bytes) -> T:
    """The parsed answer of a successful response; raises the server's error otherwise."""
    if status >= 400:
        raise error_from_body(status, content)
    if call.raw:
        return call.parse(content)
    body = json_object(content, "a response", "an unexpected JSON response")
    try:
        return call.parse(body)
    except InvalidRequest as exc:  # the server's answer, not the caller's request, is wrong
        raise CleanroomError(f"the server sent an unexpected response: {exc.message}") from exc


def stream_ended(decoder: EventDecoder, endpoint: Endpoint) -> None:
    """At the end of a run stream: raises if neither ``exit`` nor ``error`` arrived."""
    if not decoder.finished:
        details = {"address": endpoint.url}
        if decoder.run_id is not None:
            details["run_id"] = decoder.run_id
        raise ServerUnavailable(
            "the server closed the stream before the run ended", details=details
        )
