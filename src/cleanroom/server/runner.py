"""Running the server: uvicorn on pre-bound sockets, orderly shutdown, structured logs.

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
from cleanroom.server.listen import BoundListener, ListenAddress, bind
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

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._owner.started.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting before the runs are cancelled
        await self._owner.close_service()
        await super().shutdown(sockets)


class CleanroomServer:
    """Serves ``service`` on already bound listeners until asked to stop.

    ``started`` is set once the listeners accept connections. The listeners
    are closed (and unix socket files removed) when :meth:`serve` returns.
    """

    def __init__(self, service: ServiceAPI, listeners: Sequence[BoundListener]) -> None:
        self.service = service
        self.listeners = list(listeners)
        self.started = threading.Event()
        self._closed_service = False
        config = uvicorn.Config(
            create_app(service),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=_GRACEFUL_SECONDS,
        )
        self._uvicorn = _Uvicorn(config, self)

    def request_stop(self) -> None:
        """Begin an orderly shutdown (safe from any thread or a signal handler)."""
        if self._uvicorn.should_exit:
            self._uvicorn.force_exit = True  # a second request stops waiting for responses
        self._uvicorn.should_exit = True

    async def close_service(self) -> None:
        """Close the service once (cancels runs, destroys guests and networks)."""
        if self._closed_service:
            return
        self._closed_service = True
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
            _log.info("listening", addresses=[item.url() for item in self.listeners])
            await self._uvicorn.serve(sockets=[item.sock for item in self.listeners])
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
    service: ServiceAPI, addresses: Sequence[ListenAddress], *, allow_remote: bool = False
) -> None:
    """Bind every address, then serve ``service`` in a new event loop until stopped.

    Sets the process's umask to :data:`SERVER_UMASK` first. Raises
    ``ServerUnavailable`` (another server holds an address) or
    ``InvalidRequest`` (bad or refused address) before anything is served.
    """
    os.umask(SERVER_UMASK)
    listeners: list[BoundListener] = []
    try:
        for address in addresses:
            listeners.append(bind(address, allow_remote=allow_remote))
    except BaseException:
        for item in listeners:
            item.close()
        raise
    asyncio.run(CleanroomServer(service, listeners).serve())
