"""Running the real CLI in a subprocess with a private environment (CLI tests)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

ENTRY = "from cleanroom.cli.app import main; main()"


def cli_env(root: Path) -> dict[str, str]:
    """This process's environment with every XDG directory under ``root`` and no host set."""
    out = {k: v for k, v in os.environ.items() if k != "CLEANROOM_HOST"}
    out.update(
        XDG_RUNTIME_DIR=str(root / "xdg-run"),
        XDG_STATE_HOME=str(root / "xdg-state"),
        XDG_CONFIG_HOME=str(root / "xdg-config"),
        XDG_CACHE_HOME=str(root / "xdg-cache"),
        COLUMNS="200",
    )
    return out


def cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``cleanroom ARGS...`` run to completion (two minutes at most), fed ``stdin``
    (None: an empty standard input)."""
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        env=env,
        cwd=cwd,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )


def peer_pid(sock_path: Path) -> int:
    """The PID of the process serving the unix socket ``sock_path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(sock_path))
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid
