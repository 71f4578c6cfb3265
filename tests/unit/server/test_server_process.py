"""Server processes: signals shut down cleanly, and a client can start one on demand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_process import server_argv, wait_for_socket

from cleanroom.cli.autostart import ensure_local_server, server_answers
from cleanroom.client import Client, resolve_endpoint
from cleanroom.errors import RunCancelled, ServerUnavailable


@pytest.fixture
def fake_server(short_tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    sock = short_tmp / "run" / "s.sock"
    proc = subprocess.Popen(
        server_argv(f"unix://{sock}", short_tmp / "state"), stderr=subprocess.PIPE
    )
    try:
        wait_for_socket(sock, proc)
        yield proc, sock
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_removes_the_socket(
    fake_server: tuple[subprocess.Popen[bytes], Path], sig: signal.Signals
) -> None:
    proc, sock = fake_server
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0
    assert not sock.exists()
    assert proc.stderr is not None
    events = [json.loads(line)["event"] for line in proc.stderr.read().splitlines()]
    assert events[0] == "listening"
    assert "service_closing" in events
    assert events[-1] == "stopped"


def test_sigterm_cancels_a_running_run(
    fake_server: tuple[subprocess.Popen[bytes], Path], repo: Path
) -> None:
    proc, sock = fake_server
    with Client(f"unix://{sock}") as client:
        events = client.exec_stream(repo, ["sleep", "60"])
        next(events)  # started: the command is running
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(RunCancelled) as caught:
            list(events)
        assert caught.value.details["run_id"].startswith("run-")
    assert proc.wait(timeout=30) == 0
    assert not sock.exists()


def test_autostart_starts_a_detached_server_once(short_tmp: Path) -> None:
    sock = short_tmp / "auto" / "cleanroom.sock"
    endpoint = resolve_endpoint(f"unix://{sock}")
    log = short_tmp / "state" / "server.log"
    argv = server_argv(endpoint.url, short_tmp / "state")
    assert not server_answers(endpoint)
    pid = ensure_local_server(endpoint, log_path=log, argv=argv)
    assert pid is not None
    try:
        assert os.getsid(pid) == pid  # its own session: a terminal's Ctrl-C does not reach it
        assert server_answers(endpoint)
        assert ensure_local_server(endpoint, log_path=log, argv=argv) is None  # reused
        assert '"listening"' in log.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    assert not sock.exists()


def test_autostart_failure_names_the_log(short_tmp: Path) -> None:
    endpoint = resolve_endpoint(f"unix://{short_tmp}/never.sock")
    log = short_tmp / "server.log"
    argv = [sys.executable, "-c", "import sys; print('cannot start: no image'); sys.exit(3)"]
    with pytest.raises(ServerUnavailable) as caught:
        ensure_local_server(endpoint, log_path=log, argv=argv, timeout=10)
    assert caught.value.details["exit_code"] == 3
    assert caught.value.details["log_tail"] == ["cannot start: no image"]


def _real_service_available() -> bool:
    try:
        from cleanroom.config import load_config  # noqa: F401, PLC0415
        from cleanroom.service.service import Service  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _real_service_available(), reason="cleanroom.service.Service not built yet")
def test_cleanroom_serve_sigterm(short_tmp: Path) -> None:
    sock = short_tmp / "rt" / "cleanroom" / "cleanroom.sock"
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(short_tmp / "rt"),
        "XDG_STATE_HOME": str(short_tmp / "state"),
        "XDG_CONFIG_HOME": str(short_tmp / "config"),
        "XDG_CACHE_HOME": str(short_tmp / "cache"),
    }
    env.pop("CLEANROOM_HOST", None)
    serve = [sys.executable, "-c", "from cleanroom.cli.app import main; main()", "serve"]
    proc = subprocess.Popen(serve, env=env, stderr=subprocess.PIPE)
    try:
        wait_for_socket(sock, proc, limit=60)
        assert oct(sock.stat().st_mode & 0o777) == oct(0o600)
        second = subprocess.run(serve, env=env, capture_output=True, timeout=60, check=False)
        assert second.returncode == 69
        assert b"already listening" in second.stderr
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://x") as client:
            assert client.get("/healthz").json()["ok"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
