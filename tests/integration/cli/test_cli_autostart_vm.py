"""cleanroom exec starts a real server (real guests) when none answers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from cli_run import cli, cli_env, peer_pid


@pytest.mark.vm
@pytest.mark.image
def test_exec_autostarts_a_real_server(root: Path, env: dict[str, str]) -> None:
    """No server and no host configured: exec starts `cleanroom serve` and uses it."""
    env = {**env, "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))}
    work = root / "work"
    work.mkdir()
    (work / "cleanroom.yaml").write_text("version: 1\n")
    sock = root / "xdg-run" / "cleanroom" / "cleanroom.sock"
    done = cli("exec", "-c", str(work), "--", "echo from-guest", env=env)
    try:
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"from-guest\n"
        assert b"started a server" in done.stderr
        assert sock.exists()
        assert (root / "xdg-state" / "cleanroom" / "server.log").is_file()
    finally:
        if sock.exists():
            pid = peer_pid(sock)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while sock.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
    assert not sock.exists()


@pytest.fixture
def env(root: Path) -> dict[str, str]:
    return cli_env(root)
