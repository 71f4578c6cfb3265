"""The asyncio client (same API as :class:`~cleanroom.client.Client`, awaitable)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import TypeVar

import httpx

from cleanroom.client import _calls as calls
from cleanroom.client._bind import EXEC_STREAM_DOC, RUN_STREAM_DOC, awaitable, awaitable_stream
from cleanroom.client._calls import Call, answer, error_from_body, stream_ended
from cleanroom.client._endpoint import (
    DEFAULT_TIMEOUT,
    Endpoint,
    connection_error,
    precheck,
    resolve_endpoint,
)
from cleanroom.client._upload import TAR_TYPE, async_tar_chunks
from cleanroom.errors import ServerUnavailable
from cleanroom.events import NDJSON, EventDecoder
from cleanroom.models import (
    RunEvent,
    RunResult,
)

__all__ = ["AsyncClient"]

T = TypeVar("T")


_ASYNC_RUN_STREAM_DOC = RUN_STREAM_DOC.replace(
    "early disconnects", "early (``aclose``) disconnects"
)


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

    async def _with_upload(self, call: Call[T]) -> Call[T]:
        """``call``, its workspace uploaded first when the server is remote."""
        directory = calls.remote_workspace(call, self.endpoint.uds)
        if directory is None:
            return call
        uploaded = await self._call(calls.upload_workspace(directory))
        return calls.with_workspace(call, uploaded.workspace_id)

    async def _call(self, call: Call[T]) -> T:
        call = await self._with_upload(call)
        timeout = _long_timeout(self._timeout) if call.long else self._timeout
        precheck(self.endpoint)
        try:
            if call.tar is not None:
                response = await self._http.request(
                    call.method,
                    call.path,
                    content=async_tar_chunks(call.tar),
                    headers={"content-type": TAR_TYPE},
                    timeout=timeout,
                )
            else:
                response = await self._http.request(
                    call.method, call.path, json=call.body, timeout=timeout
                )
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        return answer(call, response.status_code, response.content)

    health = awaitable(calls.health)
    launch = awaitable(calls.launch)
    run = awaitable(calls.run)
    terminate = awaitable(calls.terminate)
    exec = awaitable(calls.exec_call)
    list_cleanrooms = awaitable(calls.list_cleanrooms)
    run_record = awaitable(calls.run_record)
    run_diff = awaitable(calls.run_diff)
    run_artifact = awaitable(calls.run_artifact)
    apply_changes = awaitable(calls.apply_changes)
    doctor = awaitable(calls.doctor)
    upload_workspace = awaitable(calls.upload_workspace)
    run_stream = awaitable_stream(calls.run, "run_stream", _ASYNC_RUN_STREAM_DOC)
    exec_stream = awaitable_stream(calls.exec_call, "exec_stream", EXEC_STREAM_DOC)

    async def _stream(self, call: Call[RunResult]) -> AsyncIterator[RunEvent]:
        decoder = EventDecoder()
        call = await self._with_upload(call)
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
