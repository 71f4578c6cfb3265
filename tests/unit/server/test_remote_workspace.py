"""Remote workspaces over a real TCP listener: the clients upload, the server stages
the tree strictly and runs from it; server paths stay the unix socket's.

Real server (uvicorn on 127.0.0.1), real service, guests are agent processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from remote_server import RemoteServer, tcp_server

from cleanroom import paths
from cleanroom.client import AsyncClient, Client
from cleanroom.config import LimitsConfig, RuntimeConfig, WorkspaceConfig
from cleanroom.errors import (
    BackendCapabilityMismatch,
    InvalidRequest,
    PolicyInvalid,
    PolicyNotFound,
    WorkspaceInvalid,
    WorkspaceTooLarge,
)
from cleanroom.models import RunExit, RunOutput
from cleanroom.service import Service
from cleanroom.testing import AgentProcessBackend, agent_service

CLI = str(Path(sys.executable).with_name("cleanroom"))


def _uploads() -> list[str]:
    root = paths.state_dir() / "uploads"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _wait_no_uploads() -> None:
    deadline = time.monotonic() + 10
    while _uploads():
        assert time.monotonic() < deadline, f"uploads left: {_uploads()}"
        time.sleep(0.05)


@pytest.fixture
def remote(service: Service) -> Iterator[RemoteServer]:
    with tcp_server(service) as running:
        yield running


@pytest.fixture
def http(remote: RemoteServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=remote.base_url, headers=remote.headers, timeout=60) as client:
        yield client


@pytest.fixture
def workdir(repo: Path) -> Path:
    (repo / "hello.txt").write_text("hello from the client\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "data.bin").write_bytes(os.urandom(3 << 20))  # several upload chunks
    (repo / "sub" / "link").symlink_to("data.bin")
    return repo


def test_sync_client_uploads_its_directory(remote: RemoteServer, workdir: Path) -> None:
    script = "cat hello.txt; sha256sum sub/data.bin | cut -c1-64; readlink sub/link; echo new > out"
    with Client(remote.url) as client:
        result = client.exec(workdir, ["sh", "-c", script])
        assert result.exit_code == 0, result.stderr
        digest = hashlib.sha256((workdir / "sub" / "data.bin").read_bytes()).hexdigest()
        assert result.stdout == f"hello from the client\n{digest}\ndata.bin\n"
        assert result.changes is not None
        assert result.changes.added == 1
        # The patch was rendered against the uploaded tree before it was removed.
        assert b"+new" in client.run_diff(result.run_id)
        with pytest.raises(InvalidRequest, match="uploaded"):
            client.apply_changes(result.run_id)
    assert not (workdir / "out").exists()
    _wait_no_uploads()


def test_async_client_streams_a_run_from_an_upload(remote: RemoteServer, workdir: Path) -> None:
    async def main() -> tuple[bytes, int]:
        out = b""
        code = -1
        async with AsyncClient(remote.url) as client:
            async for event in client.exec_stream(workdir, ["cat", "hello.txt"]):
                if isinstance(event, RunOutput):
                    out += event.data
                elif isinstance(event, RunExit):
                    code = event.result.exit_code
        return out, code

    assert asyncio.run(main()) == (b"hello from the client\n", 0)
    _wait_no_uploads()


def test_a_launched_context_keeps_its_upload_until_terminated(
    remote: RemoteServer, workdir: Path
) -> None:
    with Client(remote.url) as client:
        launched = client.launch(workdir)
        assert len(_uploads()) == 1
        for _ in range(2):  # every run gets a fresh copy of the same tree
            result = client.run(launched.cleanroom_id, ["sh", "-c", "cat hello.txt; rm hello.txt"])
            assert result.stdout == "hello from the client\n"
        client.terminate(launched.cleanroom_id)
    _wait_no_uploads()


def test_the_policy_is_read_from_the_upload(remote: RemoteServer, workdir: Path) -> None:
    with Client(remote.url) as client:
        (workdir / "cleanroom.yaml").write_text(
            "version: 1\nsandbox:\n  network:\n    allow:\n"
            "      - host: 203.0.113.7\n        ports: [443]\n"
        )
        with pytest.raises(BackendCapabilityMismatch):
            client.exec(workdir, ["true"])
        (workdir / "cleanroom.yaml").write_text("version: 1\nsneaky: yes\n")
        with pytest.raises(PolicyInvalid):
            client.exec(workdir, ["true"])
        (workdir / "cleanroom.yaml").unlink()
        with pytest.raises(PolicyNotFound):
            client.exec(workdir, ["true"])
    _wait_no_uploads()  # a failed launch releases its upload at once


def test_server_paths_need_the_unix_socket(http: httpx.Client, workdir: Path) -> None:
    response = http.post("/v1/exec", json={"cwd": str(workdir), "command": ["true"]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert "workspace.roots" in error["message"]
    response = http.post("/v1/cleanrooms/launch", json={"cwd": str(workdir)})
    assert response.json()["error"]["code"] == "invalid_request"


def test_server_paths_under_configured_roots(
    backend: AgentProcessBackend, state: Path, workdir: Path, root: Path
) -> None:
    config = RuntimeConfig(default_backend="qemu", workspace=WorkspaceConfig(roots=(root,)))
    with (
        tcp_server(agent_service(backend, config=config)) as running,
        httpx.Client(base_url=running.base_url, headers=running.headers, timeout=60) as http,
    ):
        body = {"cwd": str(workdir), "command": ["cat", "hello.txt"]}
        response = http.post("/v1/exec", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["stdout"] == "hello from the client\n"
        escape = {"cwd": str(workdir / ".." / ".."), "command": ["true"]}
        assert http.post("/v1/exec", json=escape).json()["error"]["code"] == "invalid_request"


def _tar(*members: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "body",
    [
        _tar(_member("../escape")),
        _tar(_member("link", tarfile.SYMTYPE, "/etc")),
        _tar(_member("dev", tarfile.CHRTYPE)),
        b"not a tar archive at all" * 100,
    ],
    ids=["traversal", "symlink-escape", "device", "garbage"],
)
def test_hostile_uploads_are_refused(http: httpx.Client, body: bytes, root: Path) -> None:
    headers = {"content-type": "application/x-tar"}
    response = http.post("/v1/workspaces", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "workspace_invalid"
    assert not (root / "escape").exists()
    _wait_no_uploads()


def test_upload_needs_a_tar_content_type(http: httpx.Client) -> None:
    response = http.post("/v1/workspaces", json={"not": "a tar"})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_request")


def test_upload_over_the_size_caps(
    backend: AgentProcessBackend, state: Path, workdir: Path
) -> None:
    limits = LimitsConfig(workspace_apparent_bytes=1 << 20)
    config = RuntimeConfig(default_backend="qemu", limits=limits)
    with tcp_server(agent_service(backend, config=config)) as running, Client(running.url) as c:
        with pytest.raises(WorkspaceTooLarge) as caught:
            c.exec(workdir, ["true"])
        assert caught.value.details["limit"] == "workspace_apparent_bytes"
        _wait_no_uploads()


def test_a_workspace_id_is_used_once(
    http: httpx.Client, remote: RemoteServer, workdir: Path
) -> None:
    with Client(remote.url) as client:
        uploaded = client.upload_workspace(workdir)
        assert uploaded.workspace_id.startswith("ws-")
        assert uploaded.files == 3  # cleanroom.yaml, hello.txt, sub/data.bin
        assert uploaded.symlinks == 1
    body = {
        "cwd": "/anything",
        "command": ["cat", "hello.txt"],
        "workspace_id": uploaded.workspace_id,
    }
    first = http.post("/v1/exec", json=body)
    assert first.json()["stdout"] == "hello from the client\n"
    again = http.post("/v1/exec", json=body)
    assert (again.status_code, again.json()["error"]["code"]) == (400, "workspace_invalid")
    unknown = http.post("/v1/exec", json={**body, "workspace_id": "ws-nope"})
    assert unknown.json()["error"]["code"] == "workspace_invalid"


def test_the_cli_execs_remotely(remote: RemoteServer, workdir: Path, root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CLEANROOM_HOST"}
    env.update(remote.client_env, XDG_RUNTIME_DIR=str(root / "xdg-run"))
    done = subprocess.run(
        [CLI, "exec", "--host", remote.url, "-c", str(workdir), "--", "cat", "hello.txt"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "hello from the client\n"), done.stderr


def test_the_cli_does_not_apply_to_a_remote_run(remote: RemoteServer, workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CLEANROOM_HOST"}
    done = subprocess.run(
        [CLI, "exec", "--host", remote.url, "-c", str(workdir), "--apply", "--", "true"],
        env={**env, **remote.client_env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "--apply needs a server on this machine's unix socket" in done.stderr
    assert _uploads() == []


def test_the_unix_socket_still_takes_server_paths(host: str, workdir: Path) -> None:
    with Client(host) as client:
        assert client.exec(workdir, ["cat", "hello.txt"]).stdout == "hello from the client\n"
    assert _uploads() == []  # nothing was uploaded


def test_unknown_workspace_ids_are_invalid_for_the_service(service: Service) -> None:
    async def main() -> None:
        with pytest.raises(WorkspaceInvalid):
            await service.launch(Path("/x"), workspace_id="ws-0")

    asyncio.run(main())


def test_an_interactive_run_uploads_too(remote: RemoteServer, workdir: Path) -> None:
    with (
        Client(remote.url) as client,
        client.exec_tty(workdir, ["cat", "hello.txt"], rows=24, cols=80) as session,
    ):
        output = b"".join(getattr(event, "data", b"") for event in session.events())
    assert output == b"hello from the client\r\n"
    _wait_no_uploads()


def test_an_async_interactive_run_uploads_too(remote: RemoteServer, workdir: Path) -> None:
    async def main() -> bytes:
        async with AsyncClient(remote.url) as client:
            session = await client.exec_tty(workdir, ["cat", "hello.txt"], rows=24, cols=80)
            async with session:
                return b"".join([getattr(event, "data", b"") async for event in session.events()])

    assert asyncio.run(main()) == b"hello from the client\r\n"
    _wait_no_uploads()
