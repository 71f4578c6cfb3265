"""The synchronous client (over a small HTTP/1.1 transport of its own; see ``_http``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from cleanroom.client import _calls as calls
from cleanroom.client._bind import (
    EXEC_STREAM_DOC,
    RUN_STREAM_DOC,
    blocking,
    blocking_stream,
    blocking_terminal,
)
from cleanroom.client._calls import Call, answer, error_from_body, stream_ended
from cleanroom.client._closing import Closing
from cleanroom.client._endpoint import (
    EndpointSettings,
    connection_error,
    precheck,
)
from cleanroom.client._http import Failure, Response, open_request
from cleanroom.client._terminal import TtyCall, exec_tty
from cleanroom.client._upload import TAR_TYPE, tar_chunks
from cleanroom.events import NDJSON, EventDecoder
from cleanroom.models import RunEvent, RunResult

if TYPE_CHECKING:
    from cleanroom.client._tty import TerminalSession

__all__ = ["Client"]

T = TypeVar("T")


class Client(EndpointSettings, Closing):
    """A blocking client for the cleanroom server API.

    ``host``: ``unix:///path``, ``tcp://h:p`` or ``http(s)://h:p``; default
    ``$CLEANROOM_HOST``, else the default local socket. A TCP server wants an
    API token: ``token``, ``token_file``, else ``$CLEANROOM_TOKEN``; its TLS
    certificate is pinned by ``tls_fingerprint`` or verified with ``tls_ca``
    (else ``$CLEANROOM_TLS_FINGERPRINT``/``$CLEANROOM_TLS_CA``, else the
    system's CAs); a certificate that does not verify raises
    ``ServerNotTrusted`` before anything is sent. Errors are raised as
    the :mod:`cleanroom.errors` class the server reported (by code);
    an unreachable server raises ``ServerUnavailable``. Launch, run, exec and
    terminate have no read timeout (runs can take minutes); other calls give
    up after ``timeout`` seconds.
    """

    def _secure(self, sock: socket.socket, host: str) -> socket.socket:
        from cleanroom.client._tls import secure_socket  # noqa: PLC0415 -- ssl on use

        return secure_socket(sock, host, self.endpoint.credentials, self.endpoint.url)

    def close(self) -> None:
        """Release the client (each request has its own connection: nothing stays open)."""

    def _open(self, call: Call[Any], accept: str) -> Response:
        precheck(self.endpoint)
        chunks = None if call.tar is None else tar_chunks(call.tar)
        try:
            return open_request(
                self.endpoint.base_url,
                self.endpoint.uds,
                call.method,
                call.path,
                json_body=call.body,
                body_chunks=chunks,
                content_type=None if chunks is None else TAR_TYPE,
                accept=accept,
                connect_timeout=self._timeout,
                read_timeout=None if call.long else self._timeout,
                headers=self.endpoint.headers(),
                secure=self._secure,
            )
        except Failure as exc:
            raise connection_error(self.endpoint, exc.kind, exc.cause) from exc
        finally:
            if chunks is not None:
                chunks.close()

    def _with_upload(self, call: Call[T]) -> Call[T]:
        """``call``, its workspace uploaded first when the server is remote."""
        directory = calls.remote_workspace(call, self.endpoint.uds)
        if directory is None:
            return call
        uploaded = self._call(calls.upload_workspace(directory))
        return calls.with_workspace(call, uploaded.workspace_id)

    def _call(self, call: Call[T]) -> T:
        call = self._with_upload(call)
        with self._open(call, "application/json") as response:
            try:
                content = response.read()
            except Failure as exc:
                raise connection_error(self.endpoint, exc.kind, exc.cause) from exc
        return answer(call, response.status, content)

    health = blocking(calls.health)
    launch = blocking(calls.launch)
    run = blocking(calls.run)
    terminate = blocking(calls.terminate)
    exec = blocking(calls.exec_call)
    list_cleanrooms = blocking(calls.list_cleanrooms)
    run_record = blocking(calls.run_record)
    run_diff = blocking(calls.run_diff)
    run_artifact = blocking(calls.run_artifact)
    apply_changes = blocking(calls.apply_changes)
    doctor = blocking(calls.doctor)
    upload_workspace = blocking(calls.upload_workspace)
    run_stream = blocking_stream(calls.run, "run_stream", RUN_STREAM_DOC)
    exec_stream = blocking_stream(calls.exec_call, "exec_stream", EXEC_STREAM_DOC)

    exec_tty = blocking_terminal(exec_tty)

    def _terminal(self, tty: TtyCall) -> TerminalSession:
        from cleanroom.client._tty import open_terminal  # noqa: PLC0415 -- websockets on use

        tty = replace(tty, call=self._with_upload(tty.call))
        return open_terminal(self.endpoint, tty, self._timeout)

    def _stream(self, call: Call[RunResult]) -> Iterator[RunEvent]:
        decoder = EventDecoder()
        call = self._with_upload(call)
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
