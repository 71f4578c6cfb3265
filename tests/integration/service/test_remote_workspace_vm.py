"""An uploaded workspace in a real guest: a TCP client's directory, run on QEMU (TCG)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from remote_server import tcp_server

from cleanroom.client import Client
from cleanroom.config import QemuConfig, RuntimeConfig
from cleanroom.errors import InvalidRequest
from cleanroom.service import Service

pytestmark = [pytest.mark.vm, pytest.mark.image]


def test_a_tcp_clients_workspace_is_uploaded_into_the_guest(repo: Path, state: Path) -> None:
    (repo / "hello.txt").write_text("hello from the client\n")
    (repo / "bin").mkdir()
    (repo / "bin" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (repo / "bin" / "run.sh").chmod(0o755)
    (repo / "bin" / "link").symlink_to("run.sh")
    os.link(repo / "hello.txt", repo / "again.txt")
    script = (
        "cat hello.txt; ./bin/run.sh; readlink bin/link; "
        "[ $(stat -c %i hello.txt) = $(stat -c %i again.txt) ] && echo same-inode; "
        "echo changed > hello.txt"
    )
    service = Service(RuntimeConfig(qemu=QemuConfig(accel="tcg", launch_seconds=120)))
    with tcp_server(service) as remote, Client(remote.url, timeout=300) as client:
        result = client.exec(repo, ["sh", "-c", script])
        assert result.exit_code == 0, result.stderr
        assert result.stdout == "hello from the client\nran\nrun.sh\nsame-inode\n"
        assert result.changes is not None
        assert result.changes.modified >= 1
        patch = client.run_diff(result.run_id)
        assert b"+changed" in patch
        with pytest.raises(InvalidRequest):
            client.apply_changes(result.run_id)
    assert (repo / "hello.txt").read_text() == "hello from the client\n"
    assert not (state / "cleanroom" / "uploads").exists()
