"""The Python client (sync and async) against a real server on a unix socket."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.client import AsyncClient, Client, LaunchResult, resolve_endpoint
from cleanroom.errors import (
    BackendUnavailable,
    CleanroomNotFound,
    InvalidRequest,
    NotFound,
    PolicyInvalid,
    PolicyNotFound,
    RunCancelled,
    RunNotFound,
    RunTimeout,
    ServerUnavailable,
)
from cleanroom.server import ListenAddress
from cleanroom.service import Service
from cleanroom.service.types import LaunchOptions, RunExit, RunOutput, RunResult, RunStarted
from cleanroom.testing import ServerThread, runs_with_status
from cleanroom.tokens import TokenStore


def test_endpoint_resolution(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(root))
    monkeypatch.delenv("CLEANROOM_HOST", raising=False)
    default = resolve_endpoint()
    assert default.is_default
    assert default.uds == root / "cleanroom" / "cleanroom.sock"
    monkeypatch.setenv("CLEANROOM_HOST", "tcp://127.0.0.1:7000")
    from_env = resolve_endpoint()
    assert (from_env.base_url, from_env.uds, from_env.is_default) == (
        "http://127.0.0.1:7000",
        None,
        False,
    )
    explicit = resolve_endpoint("unix:///x/y.sock")
    assert explicit.uds == Path("/x/y.sock")
    assert resolve_endpoint("http://127.0.0.1:9/").base_url == "http://127.0.0.1:9"
    for bad in ("unix://rel.sock", "ftp://h", "localhost:80"):
        with pytest.raises(InvalidRequest):
            resolve_endpoint(bad)


def test_typed_results(host: str, repo: Path) -> None:
    with Client(host) as client:
        assert client.health().ok
        launched = client.launch(repo, options=LaunchOptions(read_only_workspace=True))
        assert isinstance(launched, LaunchResult)
        assert launched.policy_source == repo / "cleanroom.yaml"
        result = client.run(launched.cleanroom_id, ["sh", "-c", "echo hi; exit 5"])
        assert isinstance(result, RunResult)
        assert (result.exit_code, result.stdout, result.cleanroom_id) == (
            5,
            "hi\n",
            launched.cleanroom_id,
        )
        assert result.run_dir.is_dir()
        [info] = client.list_cleanrooms()
        assert info.read_only_workspace is True
        assert info.runs == (result.run_id,)
        assert client.run_record(result.run_id)["exit_code"] == 5
        client.terminate(launched.cleanroom_id)
        client.terminate(launched.cleanroom_id)
        assert client.list_cleanrooms() == []
        report = client.doctor()
        assert report.ok == all(c.status != "fail" for c in report.checks)
        statuses = {c.name: c.status for c in report.checks}
        assert (statuses["backend.qemu"], statuses["backend.firecracker"]) == ("pass", "warn")


def test_errors_are_raised_as_their_classes(host: str, repo: Path, root: Path) -> None:
    with Client(host) as client:
        with pytest.raises(CleanroomNotFound):
            client.run("cr-nope", ["true"])
        with pytest.raises(RunNotFound):
            client.run_record("run-nope")
        with pytest.raises(NotFound):
            client.run_record("../../etc/passwd")  # no route matches: never a file read
        with pytest.raises(PolicyNotFound):
            client.launch(root)
        with pytest.raises(BackendUnavailable) as unavailable:
            client.launch(repo, backend="firecracker")
        assert unavailable.value.details["backend"] == "firecracker"
        with pytest.raises(InvalidRequest):
            client.exec(repo, [])
        with pytest.raises(InvalidRequest):
            client.exec(repo, "echo hi")  # a bare string is not an argv
        (repo / "cleanroom.yaml").write_text("bogus: 1\n")
        with pytest.raises(PolicyInvalid) as invalid:
            client.exec(repo, ["true"])
        assert invalid.value.details["problems"][0] == (
            "cleanroom.yaml:1:1: bogus: unknown key 'bogus' (expected one of: sandbox, version)"
        )


def test_unreachable_server(root: Path) -> None:
    with Client(f"unix://{root}/missing.sock") as client, pytest.raises(ServerUnavailable):
        client.health()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with Client(f"tcp://127.0.0.1:{port}") as client, pytest.raises(ServerUnavailable) as err:
            client.exec(root, ["true"])
    assert err.value.details["address"] == f"tcp://127.0.0.1:{port}"


def test_stream_events(host: str, repo: Path) -> None:
    code = (
        "import sys; sys.stdout.buffer.write(b'\\xff\\x00'); sys.stdout.flush(); "
        "sys.stderr.write('warn\\n')"
    )
    with Client(host) as client:
        events = list(client.exec_stream(repo, [sys.executable, "-c", code]))
    assert isinstance(events[0], RunStarted)
    assert isinstance(events[-1], RunExit)
    outputs = [e for e in events if isinstance(e, RunOutput)]
    assert b"".join(e.data for e in outputs if e.stream == "stdout") == b"\xff\x00"
    assert b"".join(e.data for e in outputs if e.stream == "stderr") == b"warn\n"
    assert events[-1].result.run_id == events[0].run_id


def test_stream_errors(host: str, repo: Path) -> None:
    with Client(host) as client:
        with pytest.raises(CleanroomNotFound):
            list(client.run_stream("cr-nope", ["true"]))
        seen: list[object] = []
        with pytest.raises(RunTimeout) as caught:
            seen.extend(client.exec_stream(repo, ["sleep", "30"], timeout=0.5))
        assert caught.value.details["run_id"].startswith("run-")
        # The run started (and said so) before it timed out; nothing else came.
        assert len(seen) == 1
        assert isinstance(seen[0], RunStarted)
        assert seen[0].run_id == caught.value.details["run_id"]


def test_closing_a_stream_cancels_the_run(host: str, repo: Path) -> None:
    with Client(host) as client:
        launched = client.launch(repo)
        events = client.run_stream(launched.cleanroom_id, ["sleep", "60"])
        started = next(events)
        assert isinstance(started, RunStarted)
        events.close()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 15
        while started.run_id not in runs_with_status("cancelled"):
            assert time.monotonic() < deadline, "the run was not cancelled"
            time.sleep(0.05)


def test_terminate_during_run_raises_run_cancelled(host: str, repo: Path) -> None:
    with Client(host) as client, Client(host) as other:
        launched = client.launch(repo)
        events = client.run_stream(launched.cleanroom_id, ["sleep", "60"])
        next(events)
        other.terminate(launched.cleanroom_id)
        with pytest.raises(RunCancelled):
            list(events)


async def test_async_client(host: str, repo: Path) -> None:
    async with AsyncClient(host) as client:
        assert (await client.health()).ok
        launched = await client.launch(repo)
        result = await client.run(launched.cleanroom_id, ["sh", "-c", "echo a"])
        assert result.stdout == "a\n"
        kinds = [
            type(e).__name__
            async for e in client.run_stream(launched.cleanroom_id, ["sh", "-c", "echo b"])
        ]
        assert kinds[0] == "RunStarted"
        assert "RunOutput" in kinds
        assert kinds[-1] == "RunExit"
        exec_result = await client.exec(repo, ["true"])
        assert exec_result.exit_code == 0
        assert [c.cleanroom_id for c in await client.list_cleanrooms()] == [launched.cleanroom_id]
        assert (await client.run_record(result.run_id))["run_id"] == result.run_id
        await client.terminate(launched.cleanroom_id)
        with pytest.raises(CleanroomNotFound):
            await client.run("cr-nope", ["true"])
        assert (await client.doctor()).ok
    async with AsyncClient(f"unix://{repo}/none.sock") as dead:
        with pytest.raises(ServerUnavailable):
            await dead.health()


def _read_request(conn: socket.socket) -> None:
    """Read one whole request: closing with unread data would reset the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return  # the client gave up
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)


@contextlib.contextmanager
def raw_server(path: Path, reply: bytes | None) -> Iterator[None]:
    """A unix-socket peer that reads a request and sends ``reply`` then closes
    (``None``: it never answers until the test ends)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    done = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            accepted.append(conn)
            _read_request(conn)
            if reply is not None:
                conn.sendall(reply)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(10)
        for conn in accepted:
            conn.close()


def test_silent_server_times_out(root: Path) -> None:
    sock = root / "silent.sock"
    with (
        raw_server(sock, None),
        Client(f"unix://{sock}", timeout=0.3) as client,
        pytest.raises(ServerUnavailable) as err,
    ):
        client.health()
    assert "did not answer in time" in err.value.message


@pytest.mark.parametrize(
    "reply",
    [
        b"this is not HTTP\r\n\r\n",
        b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"ok": ',
    ],
)
def test_broken_responses_are_a_lost_connection(root: Path, reply: bytes) -> None:
    sock = root / "broken.sock"
    with (
        raw_server(sock, reply),
        Client(f"unix://{sock}") as client,
        pytest.raises(ServerUnavailable) as err,
    ):
        client.health()
    assert "was lost" in err.value.message


def test_stream_cut_mid_chunk(root: Path, repo: Path) -> None:
    started = b'{"type": "started", "run_id": "run-1", "cleanroom_id": "cr-1", "run_dir": "/r"}\n'
    reply = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
        b"content-type: application/x-ndjson\r\n\r\n"
        + f"{len(started):x}\r\n".encode()
        + started
        + b'\r\n40\r\n{"type": "std'
    )
    sock = root / "cut.sock"
    events: list[object] = []
    with (
        raw_server(sock, reply),
        Client(f"unix://{sock}") as client,
        pytest.raises(ServerUnavailable) as err,
    ):
        events.extend(client.exec_stream(repo, ["true"]))
    assert [type(e) for e in events] == [RunStarted]
    assert "was lost" in err.value.message


def test_stream_ended_without_a_result(root: Path, repo: Path) -> None:
    reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    sock = root / "empty.sock"
    with (
        raw_server(sock, reply),
        Client(f"unix://{sock}") as client,
        pytest.raises(ServerUnavailable) as err,
    ):
        list(client.exec_stream(repo, ["true"]))
    assert "closed the stream before the run ended" in err.value.message


def test_tcp_endpoint(service: Service, repo: Path) -> None:
    address = ListenAddress(scheme="tcp", host="127.0.0.1", port=0)
    token = TokenStore().create("test")  # TCP listeners want a token
    with ServerThread(service, address) as server, Client(server.url, token=token) as client:
        assert client.health().ok
        assert client.exec(repo, ["sh", "-c", "echo tcp"]).stdout == "tcp\n"
        kinds = [type(e) for e in client.exec_stream(repo, ["true"])]
    assert kinds[0] is RunStarted
    assert kinds[-1] is RunExit


def test_sync_client_import_is_light() -> None:
    probe = (
        "import sys\n"
        "import cleanroom.client\n"
        "heavy = ('httpx', 'httpcore', 'anyio', 'rich', 'click', 'pydantic', 'fastapi')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from cleanroom.client import AsyncClient\n"
        "print(AsyncClient.__name__, 'httpx' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == ["[]", "AsyncClient True"]
