"""Running the server: uvicorn on pre-bound sockets, orderly shutdown, structured logs.

Each listener has its own uvicorn server in the one event loop: its own TLS
certificate (or none) and its own authentication gate in front of the one
app (see :mod:`cleanroom.server.security`).

Shutdown (SIGTERM, SIGINT, or :meth:`CleanroomServer.request_stop`): stop
accepting connections, ``await service.close()`` (which cancels running runs,
so their requests finish with ``run_cancelled``), let uvicorn finish the open
responses, then close the listeners (removing the unix socket file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Generator, Sequence

import structlog
import uvicorn

from cleanroom.errors import CleanroomError
from cleanroom.server.app import create_app
from cleanroom.server.auth import Gate
from cleanroom.server.listen import BoundListener, ListenAddress, bind
from cleanroom.server.security import ListenerSetup, ServeSecurity, setup_listener
from cleanroom.service.api import ServiceAPI

__all__ = ["SERVER_UMASK", "CleanroomServer", "configure_logging", "serve_forever"]

SERVER_UMASK = 0o077
"""Everything the server makes (run directories, records, logs, disks, the
workspace copies holding the repository's files) is private to its user."""

_GRACEFUL_SECONDS = 10
_log = structlog.get_logger("cleanroom.server")


def configure_logging(level: int = logging.INFO) -> None:
    """Structured JSON log lines on stderr (for the ``serve`` process)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)


class _Uvicorn(uvicorn.Server):
    """uvicorn with our shutdown hook and without its own signal capture.

    uvicorn re-raises captured signals after shutdown, which would turn an
    orderly SIGTERM into a signal death; the :class:`CleanroomServer` handles
    signals itself.
    """

    def __init__(self, config: uvicorn.Config, owner: CleanroomServer) -> None:
        super().__init__(config)
        self._owner = owner
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        await super().startup(sockets)
        self._owner.server_started()

    async def main_loop(self) -> None:
        """uvicorn's (a tick every 0.1 s), but a stop request is seen at once."""
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            if self._wake is None:
                await asyncio.sleep(0.1)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    def wake(self) -> None:
        """Have the main loop look at ``should_exit`` now (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: it has stopped
                loop.call_soon_threadsafe(wake.set)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._owner.stop_accepting()  # every listener, before the runs are cancelled
        await self._owner.close_service()
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)  # asks each to close and waits for them
            return
        # Nothing open: uvicorn's would still pause 0.1 s for connections to see the request.
        for sock in sockets or []:
            sock.close()
        if not self.force_exit:
            await self.lifespan.shutdown()

    def stop_accepting(self) -> None:
        """Close this server's listening sockets (idempotent)."""
        for server in getattr(self, "servers", ()):
            server.close()


class CleanroomServer:
    """Serves ``service`` on already bound listeners until asked to stop.

    ``started`` is set once every listener accepts connections. The listeners
    are closed (and unix socket files removed) when :meth:`serve` returns.
    ``security`` (default: the state directory's tokens, no TLS) decides each
    listener's authentication and certificate; a listener that requires TLS
    without a certificate raises ``InvalidRequest`` here.
    """

    def __init__(
        self,
        service: ServiceAPI,
        listeners: Sequence[BoundListener],
        *,
        security: ServeSecurity | None = None,
    ) -> None:
        self.service = service
        self.listeners = list(listeners)
        self.started = threading.Event()
        self._started_count = 0
        self._close_task: asyncio.Future[None] | None = None
        chosen = security if security is not None else ServeSecurity()
        self.setups: list[ListenerSetup] = [setup_listener(item, chosen) for item in listeners]
        app = create_app(service)
        self._servers = [
            _Uvicorn(
                uvicorn.Config(
                    Gate(app, setup.authenticator),
                    log_config=None,
                    access_log=False,
                    lifespan="off",
                    timeout_graceful_shutdown=_GRACEFUL_SECONDS,
                    ssl_certfile=None if setup.tls is None else setup.tls.cert,
                    ssl_keyfile=None if setup.tls is None else setup.tls.key,
                ),
                self,
            )
            for setup in self.setups
        ]

    def client_urls(self) -> list[str]:
        """Each listener's address as a client gives it (``https://`` for TLS)."""
        pairs = zip(self.setups, self.listeners, strict=True)
        return [setup.client_url(item) for setup, item in pairs]

    def server_started(self) -> None:
        """Called by each listener's server once it accepts connections."""
        self._started_count += 1
        if self._started_count == len(self._servers):
            self.started.set()

    def stop_accepting(self) -> None:
        """Stop accepting connections on every listener."""
        for server in self._servers:
            server.stop_accepting()

    def request_stop(self) -> None:
        """Begin an orderly shutdown (safe from any thread or a signal handler)."""
        for server in self._servers:
            if server.should_exit:
                server.force_exit = True  # a second request stops waiting for responses
            server.should_exit = True
            server.wake()

    async def close_service(self) -> None:
        """Close the service once (cancels runs, destroys guests and networks); every
        caller waits for that one close."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close_service())
        await asyncio.shield(self._close_task)

    async def _close_service(self) -> None:
        _log.info("service_closing")
        try:
            await self.service.close()
        except CleanroomError as exc:
            _log.error("service_close_failed", error=repr(exc), exc_info=exc)

    async def serve(self) -> None:
        """Start the service, serve until stopped, then clean everything up."""
        loop = asyncio.get_running_loop()
        in_main = threading.current_thread() is threading.main_thread()
        try:
            await self.service.start()
            if in_main:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self._on_signal, sig)
            tls = {setup.tls.fingerprint for setup in self.setups if setup.tls is not None}
            _log.info("listening", addresses=self.client_urls(), tls_fingerprints=sorted(tls))
            serving = [
                asyncio.ensure_future(server.serve(sockets=[item.sock]))
                for server, item in zip(self._servers, self.listeners, strict=True)
            ]
            try:
                await asyncio.gather(*serving)
            finally:
                self.request_stop()  # one listener's server failing stops them all
                await asyncio.gather(*serving, return_exceptions=True)
        finally:
            if in_main:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            await self.close_service()
            for item in self.listeners:
                item.close()
            _log.info("stopped")

    def _on_signal(self, sig: int) -> None:
        _log.info("signal", signal=signal.Signals(sig).name)
        self.request_stop()


def serve_forever(
    service: ServiceAPI,
    addresses: Sequence[ListenAddress],
    *,
    allow_remote: bool = False,
    security: ServeSecurity | None = None,
) -> None:
    """Bind every address, then serve ``service`` in a new event loop until stopped.

    Sets the process's umask to :data:`SERVER_UMASK` first. Raises
    ``ServerUnavailable`` (another server holds an address) or
    ``InvalidRequest`` (bad or refused address, TLS required but no
    certificate) before anything is served.
    """
    os.umask(SERVER_UMASK)
    listeners: list[BoundListener] = []
    try:
        for address in addresses:
            listeners.append(bind(address, allow_remote=allow_remote))
        server = CleanroomServer(service, listeners, security=security)
    except BaseException:
        for item in listeners:
            item.close()
        raise
    asyncio.run(server.serve())
