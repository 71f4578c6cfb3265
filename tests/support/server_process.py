"""The test server (``python -m cleanroom.testing.server``) as a separate process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cleanroom.cli.autostart import server_answers
from cleanroom.client import resolve_endpoint


def server_argv(listen: str, state: Path) -> list[str]:
    """The command line of a test server listening on ``listen`` with state dir ``state``."""
    return [
        sys.executable,
        "-m",
        "cleanroom.testing.server",
        "--listen",
        listen,
        "--state",
        str(state),
    ]


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], limit: float = 20.0) -> None:
    """Until the server ``proc`` answers on the unix socket ``path``; fails the test when
    it exits first or ``limit`` seconds pass."""
    deadline = time.monotonic() + limit
    while not server_answers(resolve_endpoint(f"unix://{path}")):
        if proc.poll() is not None:
            pytest.fail(f"server exited early: {proc.stderr.read() if proc.stderr else ''!r}")
        if time.monotonic() > deadline:
            pytest.fail("server did not come up")
        time.sleep(0.05)
