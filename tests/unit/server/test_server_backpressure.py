"""Backpressure end to end: a stalled streaming client stalls the guest's output.

The run's command writes as fast as it can; the client sends its request and
then reads nothing. Bounded queues and socket buffers fill, the agent client
stops reading, and the command blocks: its log stops growing at a few MiB
(without backpressure it reaches the 256 MiB output limit within seconds).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from cleanroom.server import ListenAddress
from cleanroom.service import Service
from cleanroom.testing import ServerThread, runs_with_status

STALL_CEILING = 32 << 20


def _stdout_log(state: Path) -> Path | None:
    logs = list((state / "cleanroom" / "runs").glob("run-*/stdout.log"))
    return logs[0] if logs else None


def _stalled_size(log: Path, *, quiet: float = 0.5, timeout: float = 30) -> int:
    """The log's size once it has not grown for ``quiet`` seconds (the buffers are full)."""
    deadline = time.monotonic() + timeout
    size, since = log.stat().st_size, time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "output never stalled for a client that reads nothing"
        time.sleep(0.05)
        if (now := log.stat().st_size) != size:
            size, since = now, time.monotonic()
    return size


def test_stalled_client_stalls_the_guest(
    service: Service, repo: Path, root: Path, state: Path
) -> None:
    sock_path = root / "run" / "bp.sock"
    body = json.dumps({"cwd": str(repo), "command": ["sh", "-c", "yes backpressure"]}).encode()
    request = (
        b"POST /v1/exec HTTP/1.1\r\nHost: cleanroom\r\nAccept: application/x-ndjson\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    with ServerThread(service, ListenAddress(scheme="unix", path=sock_path)):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(str(sock_path))
        client.sendall(request)  # ... and never read
        deadline = time.monotonic() + 30
        while (log := _stdout_log(state)) is None or log.stat().st_size == 0:
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        stalled_at = _stalled_size(log)
        time.sleep(1)  # and stays so: nothing reaches the client
        assert log.stat().st_size == stalled_at, "output kept flowing to a stalled client"
        assert stalled_at < STALL_CEILING
        # Reading again lets the guest go on: the stream resumes.
        client.settimeout(10)
        got = 0
        while got < 4 * stalled_at:
            chunk = client.recv(1 << 20)
            assert chunk, "the server closed the stream"
            got += len(chunk)
        assert log.stat().st_size > stalled_at
        client.close()  # the client leaves: the run is cancelled and released
        deadline = time.monotonic() + 30
        while not runs_with_status("cancelled"):
            assert time.monotonic() < deadline, "the run was not cancelled"
            time.sleep(0.1)
