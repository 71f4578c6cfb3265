"""The synchronous client (over a small HTTP/1.1 transport of its own; see ``_http``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from cleanroom.client import _calls as calls
from cleanroom.client._calls import Call, Inputs, answer, error_from_body, stream_ended
from cleanroom.client._endpoint import (
    DEFAULT_TIMEOUT,
    Endpoint,
    connection_error,
    precheck,
    resolve_endpoint,
)
from cleanroom.client._http import Failure, Response, open_request
from cleanroom.events import NDJSON, EventDecoder
from cleanroom.models import (
    Applied,
    CleanroomInfo,
    DoctorReport,
    ExecRequest,
    Health,
    LaunchOptions,
    LaunchResult,
    RunEvent,
    RunResult,
    from_dict,
)

if TYPE_CHECKING:
    from cleanroom.client._tty import TerminalSession

__all__ = ["Client"]

T = TypeVar("T")


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

    def _open(self, call: Call[Any], accept: str) -> Response:
        precheck(self.endpoint)
        try:
            return open_request(
                self.endpoint.base_url,
                self.endpoint.uds,
                call.method,
                call.path,
                json_body=call.body,
                accept=accept,
                connect_timeout=self._timeout,
                read_timeout=None if call.long else self._timeout,
            )
        except Failure as exc:
            raise connection_error(self.endpoint, exc.kind, exc.cause) from exc

    def _call(self, call: Call[T]) -> T:
        with self._open(call, "application/json") as response:
            try:
                content = response.read()
            except Failure as exc:
                raise connection_error(self.endpoint, exc.kind, exc.cause) from exc
        return answer(call, response.status, content)

    def health(self) -> Health:
        """``GET /healthz``."""
        return self._call(calls.health())

    def launch(
        self,
        cwd: Path | str,
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
    ) -> LaunchResult:
        """Launch a context from ``cwd``'s policy."""
        return self._call(calls.launch(cwd, backend, options))

    def run(
        self,
        cleanroom_id: str,
        command: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        artifacts: Sequence[str] | None = None,
    ) -> RunResult:
        """Run ``command`` (argv) in a fresh guest of the context and wait for it.

        ``env``: variables for the command (values are never recorded);
        ``stdin``: its standard input, at most 512 KiB, then EOF (default: empty);
        ``artifacts``: relative globs of workspace files to keep (see
        :meth:`run_artifact`). The result counts the workspace's ``changes``
        (see :meth:`run_diff`, :meth:`apply_changes`).
        """
        inputs = Inputs(env, stdin, artifacts)
        return self._call(calls.run(cleanroom_id, command, timeout, inputs))

    def terminate(self, cleanroom_id: str) -> None:
        """Terminate the context (idempotent)."""
        self._call(calls.terminate(cleanroom_id))

    def exec(
        self,
        cwd: Path | str,
        command: Sequence[str],
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        artifacts: Sequence[str] | None = None,
    ) -> RunResult:
        """Launch, run once, terminate (``env``, ``stdin``, ``artifacts``: as :meth:`run`)."""
        inputs = Inputs(env, stdin, artifacts)
        return self._call(calls.exec_(cwd, command, backend, options, timeout, inputs))

    def list_cleanrooms(self) -> list[CleanroomInfo]:
        """The live contexts, oldest first."""
        return self._call(calls.list_cleanrooms())

    def run_record(self, run_id: str) -> dict[str, Any]:
        """The run's record (``run-observability.json``)."""
        return self._call(calls.run_record(run_id))

    def exec_tty(
        self,
        cwd: Path | str,
        command: Sequence[str],
        *,
        rows: int,
        cols: int,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        artifacts: Sequence[str] | None = None,
    ) -> TerminalSession:
        """Launch, run ``command`` on a ``rows`` x ``cols`` pseudo-terminal, terminate.

        The session takes keystrokes (``send``), ``resize``, ``signal`` and
        ``eof``, and yields the terminal's output then the result (``events``).
        """
        from cleanroom.client._tty import open_terminal  # noqa: PLC0415 -- websockets on use

        call = calls.exec_(cwd, command, backend, options, timeout, Inputs(env, None, artifacts))
        assert call.body is not None
        request = from_dict(ExecRequest, call.body)
        return open_terminal(self.endpoint, request, rows, cols, self._timeout)

    def run_diff(self, run_id: str) -> bytes:
        """The run's workspace changes as a git-format binary patch (``git apply`` takes it;
        empty when nothing changed). Raises ``InvalidRequest`` when the run has no
        complete change set (read-only workspace, a cap hit)."""
        return self._call(calls.run_diff(run_id))

    def run_artifact(self, run_id: str, path: str) -> bytes:
        """The bytes of the run's artifact ``path`` (as listed in ``RunResult.artifacts``)."""
        return self._call(calls.run_artifact(run_id, path))

    def apply_changes(self, run_id: str) -> Applied:
        """Apply the run's workspace changes to the host directory it was copied from.

        Raises ``WorkspaceConflict`` (nothing written) when a changed host path
        was modified since the copy.
        """
        return self._call(calls.apply_changes(run_id))

    def doctor(self) -> DoctorReport:
        """The server's readiness checks."""
        return self._call(calls.doctor())

    def run_stream(
        self,
        cleanroom_id: str,
        command: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        artifacts: Sequence[str] | None = None,
    ) -> Iterator[RunEvent]:
        """Run ``command`` and yield ``RunStarted``, ``RunOutput``…, ``RunExit`` as they happen.

        A failed run raises its error (with ``details['run_id']`` once known).
        Closing the iterator early disconnects, which cancels the run.
        """
        return self._stream(
            calls.run(cleanroom_id, command, timeout, Inputs(env, stdin, artifacts))
        )

    def exec_stream(
        self,
        cwd: Path | str,
        command: Sequence[str],
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        artifacts: Sequence[str] | None = None,
    ) -> Iterator[RunEvent]:
        """Like :meth:`exec`, streaming events like :meth:`run_stream`."""
        inputs = Inputs(env, stdin, artifacts)
        return self._stream(calls.exec_(cwd, command, backend, options, timeout, inputs))

    def _stream(self, call: Call[RunResult]) -> Iterator[RunEvent]:
        decoder = EventDecoder()
        with self._open(call, NDJSON) as response:
            try:
                if response.status >= 400:
                    raise error_from_body(response.status, response.read())
                for line in response.lines():
                    event = decoder.event(line)
                    if event is not None:
                        yield event
            except Failure as exc:
                raise connection_error(self.endpoint, exc.kind, exc.cause) from exc
        stream_ended(decoder, self.endpoint)
