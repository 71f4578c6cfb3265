"""The synchronous client (over a small HTTP/1.1 transport of its own; see ``_http``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cleanroom.client._http import Failure, Response, open_request
from cleanroom.client._wire import (
    DEFAULT_TIMEOUT,
    NDJSON,
    DoctorReport,
    Endpoint,
    Health,
    LaunchResult,
    StreamState,
    check,
    connection_error,
    error_from_body,
    exec_body,
    launch_body,
    parse_cleanroom,
    parse_doctor,
    parse_health,
    parse_launch,
    parse_run,
    precheck,
    resolve_endpoint,
    run_body,
    run_record_path,
)
from cleanroom.service.types import CleanroomInfo, LaunchOptions, RunEvent, RunResult

__all__ = ["Client"]


class Client:
    """A blocking client for the cleanroom server API.

    ``host``: ``unix:///path``, ``tcp://h:p`` or ``http://h:p``; default
    ``$CLEANROOM_HOST``, else the default local socket. Errors are raised as
    the :mod:`cleanroom.errors` class the server reported (by code);
    an unreachable server raises ``ServerUnavailable``. Launch, run, exec and
    terminate have no read timeout (runs can take minutes); other calls give
    up after ``timeout`` seconds.
    """

    def __init__(self, host: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint: Endpoint = resolve_endpoint(host)
        self._timeout = timeout

    def close(self) -> None:
        """Release the client (each request has its own connection: nothing stays open)."""

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(
        self, method: str, path: str, body: Any, *, long: bool, accept: str = "application/json"
    ) -> Response:
        precheck(self.endpoint)
        try:
            return open_request(
                self.endpoint.base_url,
                self.endpoint.uds,
                method,
                path,
                json_body=body,
                accept=accept,
                connect_timeout=self._timeout,
                read_timeout=None if long else self._timeout,
            )
        except Failure as exc:
            raise connection_error(self.endpoint, exc.kind, exc.cause) from exc

    def _request(
        self, method: str, path: str, *, json: Any = None, long: bool = False
    ) -> dict[str, Any]:
        with self._open(method, path, json, long=long) as response:
            try:
                content = response.read()
            except Failure as exc:
                raise connection_error(self.endpoint, exc.kind, exc.cause) from exc
        return check(response.status, content)

    def health(self) -> Health:
        """``GET /healthz``."""
        return parse_health(self._request("GET", "/healthz"))

    def launch(
        self,
        cwd: Path | str,
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
    ) -> LaunchResult:
        """Launch a context from ``cwd``'s policy."""
        body = launch_body(cwd, backend, options)
        return parse_launch(self._request("POST", "/v1/cleanrooms/launch", json=body, long=True))

    def run(
        self, cleanroom_id: str, command: Sequence[str], *, timeout: float | None = None
    ) -> RunResult:
        """Run ``command`` (argv) in a fresh guest of the context and wait for it."""
        body = run_body(cleanroom_id, command, timeout)
        return parse_run(self._request("POST", "/v1/cleanrooms/run", json=body, long=True))

    def terminate(self, cleanroom_id: str) -> None:
        """Terminate the context (idempotent)."""
        self._request(
            "POST", "/v1/cleanrooms/terminate", json={"cleanroom_id": cleanroom_id}, long=True
        )

    def exec(
        self,
        cwd: Path | str,
        command: Sequence[str],
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Launch, run once, terminate."""
        body = exec_body(cwd, command, backend, options, timeout)
        return parse_run(self._request("POST", "/v1/exec", json=body, long=True))

    def list_cleanrooms(self) -> list[CleanroomInfo]:
        """The live contexts, oldest first."""
        body = self._request("GET", "/v1/cleanrooms")
        return [parse_cleanroom(item) for item in body["cleanrooms"]]

    def run_record(self, run_id: str) -> dict[str, Any]:
        """The run's record (``run-observability.json``)."""
        return self._request("GET", run_record_path(run_id))

    def doctor(self) -> DoctorReport:
        """The server's readiness checks."""
        return parse_doctor(self._request("GET", "/v1/doctor", long=True))

    def run_stream(
        self, cleanroom_id: str, command: Sequence[str], *, timeout: float | None = None
    ) -> Iterator[RunEvent]:
        """Run ``command`` and yield ``RunStarted``, ``RunOutput``…, ``RunExit`` as they happen.

        A failed run raises its error (with ``details['run_id']`` once known).
        Closing the iterator early disconnects, which cancels the run.
        """
        body = run_body(cleanroom_id, command, timeout)
        return self._stream("/v1/cleanrooms/run", body)

    def exec_stream(
        self,
        cwd: Path | str,
        command: Sequence[str],
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        timeout: float | None = None,
    ) -> Iterator[RunEvent]:
        """Like :meth:`exec`, streaming events like :meth:`run_stream`."""
        body = exec_body(cwd, command, backend, options, timeout)
        return self._stream("/v1/exec", body)

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[RunEvent]:
        state = StreamState()
        with self._open("POST", path, body, long=True, accept=NDJSON) as response:
            try:
                if response.status >= 400:
                    raise error_from_body(response.status, response.read())
                for line in response.lines():
                    event = state.event(line)
                    if event is not None:
                        yield event
            except Failure as exc:
                raise connection_error(self.endpoint, exc.kind, exc.cause) from exc
        state.ended(self.endpoint)
