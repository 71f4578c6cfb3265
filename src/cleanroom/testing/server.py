"""A real server in a background thread, and a test server process.

``python -m cleanroom.testing.server --listen unix:///path --state DIR`` serves
the real service over the agent-process backend (see
:func:`~cleanroom.testing.agent_service`) until SIGTERM/SIGINT, with
``$XDG_STATE_HOME`` set to ``DIR``: for tests of autostart and signal handling,
which need a server in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from cleanroom.server.listen import ListenAddress, bind, parse_listen
from cleanroom.server.runner import CleanroomServer, configure_logging, serve_forever
from cleanroom.server.security import ServeSecurity
from cleanroom.service.api import ServiceAPI

__all__ = ["ServerThread", "main"]


class ServerThread:
    """A real server (uvicorn on a bound socket) running in a background thread.

    Use as a context manager: the listener is bound on entry (errors raise
    there) and the server is stopped and its socket removed on exit.
    """

    def __init__(
        self,
        service: ServiceAPI,
        address: ListenAddress,
        *,
        allow_remote: bool = False,
        security: ServeSecurity | None = None,
    ) -> None:
        self.service = service
        self.address = address
        self._allow_remote = allow_remote
        self._security = security
        self._server: CleanroomServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The bound address as a client gives it (``tcp://127.0.0.1:PORT`` for port 0,
        ``https://...`` when the listener speaks TLS)."""
        assert self._server is not None
        return self._server.client_urls()[0]

    def __enter__(self) -> ServerThread:
        listener = bind(self.address, allow_remote=self._allow_remote)
        try:
            self._server = CleanroomServer(self.service, [listener], security=self._security)
        except BaseException:
            listener.close()  # nobody else holds it yet
            raise
        self._thread = threading.Thread(target=self._main, name="cleanroom-server", daemon=True)
        self._thread.start()
        if not self._server.started.wait(15) or self._error is not None:
            self.__exit__()
            raise RuntimeError(f"test server did not start: {self._error!r}")
        return self

    def _main(self) -> None:
        assert self._server is not None
        try:
            asyncio.run(self._server.serve())
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__/__exit__
            self._error = exc

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.request_stop()
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                raise RuntimeError("test server did not stop")


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the real service over agent processes on ``--listen`` until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="cleanroom test server (agent-process backend)")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--state", required=True, type=Path)
    args = parser.parse_args(argv)
    os.environ["XDG_STATE_HOME"] = str(args.state)
    from cleanroom.testing.service import agent_service  # noqa: PLC0415 - after the env is set

    configure_logging()
    # The product's own entry point: same binding, same umask, same shutdown.
    serve_forever(agent_service(), [parse_listen(args.listen)])


if __name__ == "__main__":
    main()
