"""Starting a local server on demand (for ``cleanroom exec`` on the default socket).

The server is started detached (new session, output appended to
``state_dir()/server.log``) and keeps running for later commands. Two
clients racing to start one are fine: the loser's server exits with
``server_unavailable`` (address in use) and both use the winner.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cleanroom.client import Client, Endpoint
from cleanroom.errors import ServerUnavailable

__all__ = ["ensure_local_server", "serve_argv", "server_answers"]

_POLL_SECONDS = 0.1
_ADDRESS_IN_USE = 69


def server_answers(endpoint: Endpoint, *, timeout: float = 2.0) -> bool:
    """True when a cleanroom server answers ``/healthz`` at ``endpoint``."""
    if endpoint.uds is not None and not endpoint.uds.exists():
        return False
    try:
        with Client(endpoint.url, timeout=timeout) as client:
            return client.health().ok
    except ServerUnavailable:
        return False


def serve_argv(endpoint: Endpoint) -> list[str]:
    """The command line of a ``cleanroom serve`` on ``endpoint`` (this interpreter)."""
    return [
        sys.executable,
        "-c",
        "from cleanroom.cli.app import main; main()",
        "serve",
        "--listen",
        endpoint.url,
    ]


def ensure_local_server(
    endpoint: Endpoint,
    *,
    log_path: Path,
    argv: Sequence[str] | None = None,
    timeout: float = 15.0,
) -> int | None:
    """Make sure a server answers at ``endpoint``, starting ``argv`` detached if not.

    Returns the pid of the server this call started (``None`` if one was
    already answering). Raises ``ServerUnavailable`` (with the log path and
    its last lines) when none answers within ``timeout``.
    """
    if server_answers(endpoint):
        return None
    pid = _spawn_detached(list(argv or serve_argv(endpoint)), log_path)
    deadline = time.monotonic() + timeout
    code: int | None = None
    while time.monotonic() < deadline:
        if server_answers(endpoint, timeout=1.0):
            return pid
        if code is None:
            code = _exit_status(pid)
        if code is not None and code != _ADDRESS_IN_USE:
            break  # it died for a reason other than losing a start race
        time.sleep(_POLL_SECONDS)
    if server_answers(endpoint, timeout=1.0):
        return pid
    raise ServerUnavailable(
        f"started a cleanroom server for {endpoint.url}, but it did not answer",
        details={
            "address": endpoint.url,
            "log": str(log_path),
            "exit_code": code,
            "log_tail": _tail(log_path),
            "hint": f"see {log_path}, or run `cleanroom serve` in a terminal",
        },
    )


def _spawn_detached(argv: list[str], log_path: Path) -> int:
    """Start ``argv`` in a new session with output appended to ``log_path``; its pid.

    ``posix_spawn`` rather than ``subprocess``: the server is meant to outlive
    this process, and a ``Popen`` object would warn about it on collection.
    """
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            return os.posix_spawn(
                argv[0],
                argv,
                dict(os.environ),
                setsid=True,  # survives this command and its terminal's Ctrl-C
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                ],
            )
        finally:
            os.close(log_fd)
    except OSError as exc:
        raise ServerUnavailable(
            f"could not start a cleanroom server: {exc.strerror}",
            details={"argv": argv, "log": str(log_path)},
        ) from exc


def _exit_status(pid: int) -> int | None:
    """The child's exit code if it has exited (reaping it), else ``None``."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    return os.waitstatus_to_exitcode(status) if done else None


def _tail(path: Path, lines: int = 10) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
