"""The HTTP application: routes that translate JSON to service calls and errors to bodies.

``create_app(service)`` takes any :class:`~cleanroom.service.ServiceAPI`. Request
and response bodies are the wire models of :mod:`cleanroom.models`: pydantic
validates requests against them (with the rules stated on their fields) and
renders them into the OpenAPI document. Every error response is
``{"error": {"code", "message", "details"}}`` with the error class's status;
errors are mapped by class, and anything unexpected becomes a logged 500
``internal_error`` with a generic message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import cleanroom
from cleanroom.errors import (
    CleanroomError,
    InvalidRequest,
    NotFound,
    RunCancelled,
    WorkspaceInvalid,
)
from cleanroom.events import NDJSON
from cleanroom.models import (
    Applied,
    CleanroomList,
    DoctorReport,
    ErrorBody,
    ExecRequest,
    Health,
    LaunchRequest,
    LaunchResult,
    RunRequest,
    RunResult,
    Terminated,
    TerminateRequest,
    WorkspaceUploaded,
)
from cleanroom.server.middleware import DEFAULT_BODY_LIMIT, AccessLog, BodyLimit
from cleanroom.server.openapi import install_openapi
from cleanroom.server.origin import over_unix_socket
from cleanroom.server.schemas import prepare_wire_schemas
from cleanroom.server.streaming import RunStreamResponse, as_cleanroom_error
from cleanroom.server.tasks import cancel_and_wait
from cleanroom.server.terminal_ws import install_terminal
from cleanroom.service.api import ServiceAPI
from cleanroom.service.types import EventSink, RunOptions

__all__ = ["create_app"]

T = TypeVar("T")
_log = structlog.get_logger("cleanroom.server")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": "error"} for status in statuses}


# Statuses each kind of route can answer with (see cleanroom.errors for the codes).
_GET_ERRORS = _errors(500)
_BODY_ERRORS = (400, 413, 500)
_LAUNCH_ERRORS = _errors(*_BODY_ERRORS, 404, 409, 422, 502, 503, 504)
_RUN_ERRORS = _errors(*_BODY_ERRORS, 404, 409, 502, 503, 504)
_STREAMING = {
    "description": "The run result; or, with `Accept: application/x-ndjson`, one JSON "
    "event per line: started, stdout/stderr chunks, then exit or error.",
    "content": {NDJSON: {"schema": {"type": "string"}}},
}


_DIFF = "text/x-diff"
_OCTETS = "application/octet-stream"
_TAR = "application/x-tar"
WORKSPACES_PATH = "/v1/workspaces"
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The workspace as an uncompressed tar stream (ustar, PAX or GNU "
        "long names; regular files, directories, symlinks staying inside the tree, hard "
        "links), sent as is (no multipart), e.g. with chunked transfer coding.",
        "content": {_TAR: {"schema": {"type": "string", "format": "binary"}}},
    }
}

# pydantic names these differently for dataclasses than for models; the API keeps
# the model names it has always reported.
_ERROR_TYPES = {
    "unexpected_keyword_argument": "extra_forbidden",
    "missing_argument": "missing",
    "missing_keyword_only_argument": "missing",
}


def _error_response(exc: CleanroomError, status: int | None = None) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=status or exc.status, headers=exc.http_headers())


async def _guard(awaitable: Awaitable[T]) -> T:
    """Await a service call, turning foreign exceptions into a logged internal error."""
    try:
        return await awaitable
    except CleanroomError:
        raise
    except Exception as exc:
        raise as_cleanroom_error(exc) from exc


def _guard_sync(call: Callable[[], T]) -> T:
    try:
        return call()
    except CleanroomError:
        raise
    except Exception as exc:
        raise as_cleanroom_error(exc) from exc


async def _cancel_on_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``; cancel it if the client disconnects first."""
    work = asyncio.ensure_future(awaitable)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    gone = asyncio.create_task(disconnected())
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            _log.info("client_gone", path=request.url.path)
            await cancel_and_wait(work)
            raise RunCancelled("the client disconnected")
        return await _guard(work)
    finally:
        await cancel_and_wait(work, gone)


def _wants_stream(request: Request) -> bool:
    return NDJSON in request.headers.get("accept", "")


def create_app(service: ServiceAPI, *, body_limit: int = DEFAULT_BODY_LIMIT) -> FastAPI:
    """The FastAPI app serving the cleanroom HTTP API over ``service``.

    Request bodies over ``body_limit`` bytes are refused with 413 ``invalid_request``.
    """
    prepare_wire_schemas()
    app = FastAPI(
        title="cleanroom",
        version=cleanroom.__version__,
        description="Run commands in fresh microVMs under a repository's network policy.",
    )
    app.add_middleware(BodyLimit, limit=body_limit, streamed=frozenset({WORKSPACES_PATH}))
    app.add_middleware(AccessLog)  # added last: outermost, so it sees every response
    _install_error_handlers(app)
    install_openapi(app)

    @app.get("/healthz", response_model=Health, responses=_GET_ERRORS)
    async def healthz() -> Health:
        ready, size = service.warm_guests()
        return Health(ok=True, version=cleanroom.__version__, warm_ready=ready, warm_size=size)

    @app.post(
        WORKSPACES_PATH,
        response_model=WorkspaceUploaded,
        responses=_errors(400, 408, 413, 500, 503),
        openapi_extra=_UPLOAD_BODY,
        description="Upload a workspace for one later launch or exec (its `workspace_id`), "
        "for clients whose directory is not on the server. The archive is read as a "
        "stream and extracted strictly (`workspace_invalid`), within the runtime "
        "config's `limits.workspace_bytes` and `limits.workspace_apparent_bytes` "
        "(`workspace_too_large`). An upload too slow (`limits.upload_timeout_seconds`, "
        "`limits.upload_min_bytes` per `limits.upload_window_seconds`) is `upload_timeout` "
        "and the connection is closed. An upload no launch claims expires "
        "(`limits.upload_ttl_seconds`); every upload is removed when the server stops.",
    )
    async def upload_workspace(request: Request) -> WorkspaceUploaded:
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip()
        if kind not in (_TAR, _OCTETS):
            raise InvalidRequest(f"the body must be a tar stream sent with Content-Type: {_TAR}")

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in request.stream():
                    yield chunk
            except ClientDisconnect as exc:
                raise WorkspaceInvalid("the client went away during the upload") from exc

        upload = await _guard(service.upload_workspace(body()))
        stats = upload.stats
        return WorkspaceUploaded(
            workspace_id=upload.workspace_id,
            files=stats.files + stats.hardlinks,
            directories=stats.directories,
            symlinks=stats.symlinks,
            bytes=stats.bytes,
            archive_bytes=stats.archive_bytes,
            expires_in_seconds=upload.expires_in_seconds,
        )

    @app.post("/v1/cleanrooms/launch", response_model=LaunchResult, responses=_LAUNCH_ERRORS)
    async def launch(body: LaunchRequest, request: Request) -> LaunchResult:
        info = await _guard(
            service.launch(
                body.cwd,
                backend=body.backend,
                options=body.options,
                workspace_id=body.workspace_id,
                local=over_unix_socket(request.scope),
            )
        )
        return LaunchResult.of(info)

    @app.post(
        "/v1/cleanrooms/run",
        response_model=RunResult,
        responses={**_RUN_ERRORS, 200: _STREAMING},
    )
    async def run(body: RunRequest, request: Request) -> Any:
        def start(on_event: EventSink | None) -> Coroutine[Any, Any, RunResult]:
            return service.run(
                body.cleanroom_id, body.command, RunOptions.of(body), on_event=on_event
            )

        if _wants_stream(request):
            return RunStreamResponse(start)
        return await _cancel_on_disconnect(request, start(None))

    @app.post("/v1/cleanrooms/terminate", response_model=Terminated, responses=_RUN_ERRORS)
    async def terminate(body: TerminateRequest) -> Terminated:
        await _guard(service.terminate(body.cleanroom_id))
        return Terminated()

    @app.post("/v1/exec", response_model=RunResult, responses={**_LAUNCH_ERRORS, 200: _STREAMING})
    async def exec_(body: ExecRequest, request: Request) -> Any:
        def start(on_event: EventSink | None) -> Coroutine[Any, Any, RunResult]:
            return service.exec(
                body.cwd,
                body.command,
                RunOptions.of(body),
                on_event=on_event,
                backend=body.backend,
                options=body.options,
                workspace_id=body.workspace_id,
                local=over_unix_socket(request.scope),
            )

        if _wants_stream(request):
            return RunStreamResponse(start)
        return await _cancel_on_disconnect(request, start(None))

    @app.get("/v1/cleanrooms", response_model=CleanroomList, responses=_GET_ERRORS)
    async def list_cleanrooms() -> CleanroomList:
        return CleanroomList(tuple(_guard_sync(service.list_cleanrooms)))

    @app.get(
        "/v1/runs/{run_id}",
        response_model=dict[str, Any],
        responses=_errors(400, 404, 500),
        description="The run record (`run-observability.json`).",
    )
    async def run_record(run_id: str) -> dict[str, Any]:
        return await _guard(service.run_record(run_id))

    @app.get(
        "/v1/runs/{run_id}/diff",
        responses={
            **_errors(400, 404, 409, 500),
            200: {
                "description": "The workspace changes as a git-format binary patch "
                "(`git apply` it; empty when nothing changed).",
                "content": {_DIFF: {"schema": {"type": "string"}}},
            },
        },
        response_class=Response,
    )
    async def run_diff(run_id: str) -> Response:
        return Response(await _guard(service.run_diff(run_id)), media_type=_DIFF)

    @app.get(
        "/v1/runs/{run_id}/artifacts/{path:path}",
        responses={
            **_errors(400, 404, 500),
            200: {
                "description": "The artifact's bytes.",
                "content": {_OCTETS: {"schema": {"type": "string", "format": "binary"}}},
            },
        },
        response_class=Response,
    )
    async def run_artifact(run_id: str, path: str) -> Response:
        file = await _guard(service.run_artifact(run_id, path))
        return FileResponse(file, media_type=_OCTETS)

    @app.post(
        "/v1/runs/{run_id}/apply",
        response_model=Applied,
        responses=_errors(400, 404, 409, 500),
        description="Apply the run's workspace changes to the host directory it was copied "
        "from; `workspace_conflict` (nothing written) when a changed host path was "
        "modified since the copy.",
    )
    async def apply_changes(run_id: str) -> Applied:
        return await _guard(service.apply_changes(run_id))

    @app.get("/v1/doctor", response_model=DoctorReport, responses=_GET_ERRORS)
    async def doctor() -> DoctorReport:
        return DoctorReport.of(await _guard(service.doctor()))

    install_terminal(app, service)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def on_cleanroom_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, CleanroomError)
        if exc.status >= 500:
            _log.warning("request_failed", code=exc.code, message=exc.message)
        return _error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": _ERROR_TYPES.get(str(e.get("type", "")), str(e.get("type", ""))),
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:3])
        if "json" not in request.headers.get("content-type", ""):
            summary = "the body must be JSON sent with Content-Type: application/json"
        return _error_response(
            InvalidRequest(f"invalid request: {summary}", details={"errors": errors})
        )

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error: CleanroomError
        if exc.status_code == 404:
            error = NotFound("no such endpoint")
        else:
            error = InvalidRequest(str(exc.detail))
        return _error_response(error, exc.status_code)

    app.add_exception_handler(CleanroomError, on_cleanroom_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
