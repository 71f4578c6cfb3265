"""The asyncio client (same API as :class:`~cleanroom.client.Client`, awaitable)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

import httpx

from cleanroom.client import _calls as calls
from cleanroom.client._bind import (
    EXEC_STREAM_DOC,
    RUN_STREAM_DOC,
    awaitable,
    awaitable_stream,
    awaitable_terminal,
)
from cleanroom.client._calls import Call, answer, error_from_body, stream_ended
from cleanroom.client._closing import AsyncClosing
from cleanroom.client._endpoint import (
    EndpointSettings,
    connection_error,
    precheck,
)
from cleanroom.client._terminal import TtyCall, exec_tty
from cleanroom.client._upload import TAR_TYPE, async_tar_chunks
from cleanroom.errors import ServerUnavailable
from cleanroom.events import NDJSON, EventDecoder
from cleanroom.models import (
    RunEvent,
    RunResult,
)

if TYPE_CHECKING:
    from cleanroom.client._tty_async import AsyncTerminalSession

__all__ = ["AsyncClient"]

T = TypeVar("T")


_ASYNC_RUN_STREAM_DOC = RUN_STREAM_DOC.replace(
    "early disconnects", "early (``aclose``) disconnects"
)


def _long_timeout(connect: float) -> httpx.Timeout:
    """No read limit (runs take minutes), bounded connect/write/pool waits."""
    return httpx.Timeout(connect, read=None)


class AsyncClient(EndpointSettings, AsyncClosing):
    """An asyncio client for the cleanroom server API.

    ``host``: ``unix:///path``, ``tcp://h:p`` or ``http(s)://h:p``; default
    ``$CLEANROOM_HOST``, else the default local socket. The token and TLS
    settings are those of :class:`~cleanroom.client.Client`. Errors are raised as
    the :mod:`cleanroom.errors` class the server reported (by code);
    an unreachable server raises ``ServerUnavailable``. Launch, run, exec and
    terminate have no read timeout (runs can take minutes); other calls give
    up after ``timeout`` seconds.
    """

    _client: httpx.AsyncClient | None = None
    """The connection pool, made on first use."""
    _closed = False

    async def _http(self) -> httpx.AsyncClient:
        """The connection pool, made on first use (a pinned certificate is fetched
        and checked then, off the event loop)."""
        if self._client is not None:
            return self._client
        if self._closed:
            raise RuntimeError("the client is closed")
        endpoint = self.endpoint
        verify: ssl.SSLContext | bool = False
        if endpoint.tls:
            from cleanroom.client._tls import anchored_context  # noqa: PLC0415

            host, port = endpoint.host_port()
            try:
                verify = await asyncio.to_thread(
                    anchored_context, host, port, endpoint.credentials, self._timeout, endpoint.url
                )
            except OSError as exc:
                raise connection_error(endpoint, "connect", str(exc)) from exc
        # Plain HTTP (unix socket or http://) needs no TLS context, and building
        # one (loading the CA bundle) costs ~100 ms of every CLI command.
        transport = httpx.AsyncHTTPTransport(
            uds=str(endpoint.uds) if endpoint.uds else None, verify=verify
        )
        if self._client is None:  # another task may have made it meanwhile
            self._client = httpx.AsyncClient(
                base_url=endpoint.base_url,
                transport=transport,
                timeout=self._timeout,
                headers=endpoint.headers(),
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool."""
        self._closed = True
        if self._client is not None:
            await self._client.aclose()

    def _unavailable(self, exc: httpx.TransportError) -> ServerUnavailable:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ssl.SSLCertVerificationError):
                from cleanroom.client._tls import not_trusted  # noqa: PLC0415

                return not_trusted(self.endpoint.url, cause.verify_message or str(cause))
            cause = cause.__cause__ or cause.__context__
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
        http = await self._http()
        try:
            if call.tar is not None:
                response = await http.request(
                    call.method,
                    call.path,
                    content=async_tar_chunks(call.tar),
                    headers={"content-type": TAR_TYPE},
                    timeout=timeout,
                )
            else:
                response = await http.request(
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
    exec_tty = awaitable_terminal(exec_tty)

    async def _terminal(self, tty: TtyCall) -> AsyncTerminalSession:
        from cleanroom.client._tty_async import open_async_terminal  # noqa: PLC0415

        tty = replace(tty, call=await self._with_upload(tty.call))
        return await open_async_terminal(self.endpoint, tty, self._timeout)

    async def _stream(self, call: Call[RunResult]) -> AsyncIterator[RunEvent]:
        decoder = EventDecoder()
        call = await self._with_upload(call)
        precheck(self.endpoint)
        http = await self._http()
        try:
            async with http.stream(
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
