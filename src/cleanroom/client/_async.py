"""The asyncio client (same API as :class:`~cleanroom.client.Client`, awaitable)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from cleanroom.client import _calls as calls
from cleanroom.client._calls import Call, Inputs, answer, error_from_body, stream_ended
from cleanroom.client._endpoint import (
    DEFAULT_TIMEOUT,
    Endpoint,
    connection_error,
    precheck,
    resolve_endpoint,
)
from cleanroom.errors import ServerUnavailable
from cleanroom.events import NDJSON, EventDecoder
from cleanroom.models import (
    Applied,
    CleanroomInfo,
    DoctorReport,
    Health,
    LaunchOptions,
    LaunchResult,
    RunEvent,
    RunResult,
)

__all__ = ["AsyncClient"]

T = TypeVar("T")


def _long_timeout(connect: float) -> httpx.Timeout:
    """No read limit (runs take minutes), bounded connect/write/pool waits."""
    return httpx.Timeout(connect, read=None)


class AsyncClient:
    """An asyncio client for the cleanroom server API.

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
        # Plain HTTP (unix socket or http://) needs no TLS context, and building
        # one (loading the CA bundle) costs ~100 ms of every CLI command.
        transport = (
            None
            if self.endpoint.tls
            else httpx.AsyncHTTPTransport(
                uds=str(self.endpoint.uds) if self.endpoint.uds else None, verify=False
            )
        )
        self._http = httpx.AsyncClient(
            base_url=self.endpoint.base_url, transport=transport, timeout=timeout
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _unavailable(self, exc: httpx.TransportError) -> ServerUnavailable:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            kind = "connect"
        elif isinstance(exc, httpx.TimeoutException):
            kind = "timeout"
        else:
            kind = "lost"
        return connection_error(self.endpoint, kind, str(exc) or type(exc).__name__)

    async def _call(self, call: Call[T]) -> T:
        timeout = _long_timeout(self._timeout) if call.long else self._timeout
        precheck(self.endpoint)
        try:
            response = await self._http.request(
                call.method, call.path, json=call.body, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        return answer(call, response.status_code, response.content)

    async def health(self) -> Health:
        """``GET /healthz``."""
        return await self._call(calls.health())

    async def launch(
        self,
        cwd: Path | str,
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
    ) -> LaunchResult:
        """Launch a context from ``cwd``'s policy."""
        return await self._call(calls.launch(cwd, backend, options))

    async def run(
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
        return await self._call(calls.run(cleanroom_id, command, timeout, inputs))

    async def terminate(self, cleanroom_id: str) -> None:
        """Terminate the context (idempotent)."""
        await self._call(calls.terminate(cleanroom_id))

    async def exec(
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
        return await self._call(calls.exec_(cwd, command, backend, options, timeout, inputs))

    async def list_cleanrooms(self) -> list[CleanroomInfo]:
        """The live contexts, oldest first."""
        return await self._call(calls.list_cleanrooms())

    async def run_record(self, run_id: str) -> dict[str, Any]:
        """The run's record (``run-observability.json``)."""
        return await self._call(calls.run_record(run_id))

    async def run_diff(self, run_id: str) -> bytes:
        """The run's workspace changes as a git-format binary patch (``git apply`` takes it;
        empty when nothing changed). Raises ``InvalidRequest`` when the run has no
        complete change set (read-only workspace, a cap hit)."""
        return await self._call(calls.run_diff(run_id))

    async def run_artifact(self, run_id: str, path: str) -> bytes:
        """The bytes of the run's artifact ``path`` (as listed in ``RunResult.artifacts``)."""
        return await self._call(calls.run_artifact(run_id, path))

    async def apply_changes(self, run_id: str) -> Applied:
        """Apply the run's workspace changes to the host directory it was copied from.

        Raises ``WorkspaceConflict`` (nothing written) when a changed host path
        was modified since the copy.
        """
        return await self._call(calls.apply_changes(run_id))

    async def doctor(self) -> DoctorReport:
        """The server's readiness checks."""
        return await self._call(calls.doctor())

    def run_stream(
        self,
        cleanroom_id: str,
        command: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        artifacts: Sequence[str] | None = None,
    ) -> AsyncIterator[RunEvent]:
        """Run ``command`` and yield ``RunStarted``, ``RunOutput``…, ``RunExit`` as they happen.

        A failed run raises its error (with ``details['run_id']`` once known).
        Closing the iterator early (``aclose``) disconnects, which cancels the run.
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
    ) -> AsyncIterator[RunEvent]:
        """Like :meth:`exec`, streaming events like :meth:`run_stream`."""
        inputs = Inputs(env, stdin, artifacts)
        return self._stream(calls.exec_(cwd, command, backend, options, timeout, inputs))

    async def _stream(self, call: Call[RunResult]) -> AsyncIterator[RunEvent]:
        decoder = EventDecoder()
        precheck(self.endpoint)
        try:
            async with self._http.stream(
                call.method,
                call.path,
                json=call.body,
                headers={"accept": NDJSON},
                timeout=_long_timeout(self._timeout),
            ) as response:
                if response.status_code >= 400:
                    raise error_from_body(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    event = decoder.event(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        stream_ended(decoder, self.endpoint)
