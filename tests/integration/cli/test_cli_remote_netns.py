"""A remote ``cleanroom exec``: the client runs in a network namespace of its own and
reaches the server only over a veth pair, uploading its workspace.

Topology (made here, removed in the fixture's finalizer, also on failure): a
namespace named with this test run's prefix, one end of a veth pair in it with
10.203.N.M+2/30, the other end in the host namespace with 10.203.N.M+1/30. The
namespace has no other route, so its only peer is the server on the veth
address.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_run import ENTRY, cli_env
from remote_server import tcp_server

from cleanroom.service import Service

PREFIX = os.environ["CLEANROOM_NETNS_PREFIX"]
TAG = os.environ["CLEANROOM_TEST_TAG"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class ClientNamespace:
    """A namespace whose only link is a veth to the host: ``server_ip`` is the host's end."""

    name: str
    server_ip: str
    client_ip: str


@pytest.fixture
def client_ns() -> Iterator[ClientNamespace]:
    suffix = secrets.token_hex(2)
    name = f"{PREFIX}rc{suffix}"
    host_link, ns_link = f"crh{TAG}{suffix}"[:15], f"crc{TAG}{suffix}"[:15]
    base = 4 * secrets.randbelow(64)
    subnet = f"10.203.{secrets.randbelow(256)}"
    server_ip, client_ip = f"{subnet}.{base + 1}", f"{subnet}.{base + 2}"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        _ip("link", "set", ns_link, "netns", name)
        _ip("addr", "add", f"{server_ip}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        _ip("-n", name, "addr", "add", f"{client_ip}/30", "dev", ns_link)
        _ip("-n", name, "link", "set", ns_link, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield ClientNamespace(name, server_ip, client_ip)
    finally:
        _ip("link", "del", host_link, check=False)
        _ip("netns", "del", name, check=False)
    assert name not in _ip("netns", "list").stdout
    assert _ip("link", "show", host_link, check=False).returncode != 0


@pytest.mark.network
def test_exec_from_another_namespace_uploads_its_workspace(
    client_ns: ClientNamespace, service: Service, root: Path
) -> None:
    work = root / "client-work"
    (work / "src").mkdir(parents=True)
    (work / "cleanroom.yaml").write_text("version: 1\n")
    (work / "src" / "somefile").write_text("only the client has this\n")
    routes = _ip("-n", client_ns.name, "route", "show").stdout
    assert "default" not in routes  # nothing but the veth's /30
    with tcp_server(service, host=client_ns.server_ip) as remote:
        assert remote.url.startswith(f"tcp://{client_ns.server_ip}:")
        env = {**cli_env(root), **remote.client_env}
        in_ns = ["ip", "netns", "exec", client_ns.name, sys.executable, "-c"]
        done = subprocess.run(
            [
                *in_ns,
                ENTRY,
                "exec",
                "--host",
                remote.url,
                "-c",
                str(work),
                "--",
                "cat",
                "src/somefile",
            ],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == b"only the client has this\n"
        # The server refuses a server path from this client: the run above had to upload.
        refused = subprocess.run(
            [
                *in_ns,
                _RAW_EXEC.format(base=remote.base_url, cwd=work),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.stdout.strip() == "400 invalid_request", refused.stderr


# Authenticated (the token from the environment), over the listener's TLS; the
# certificate is not what this probe checks (the CLI above pinned it).
_RAW_EXEC = """
import os, httpx
r = httpx.post(
    "{base}/v1/exec",
    json={{"cwd": "{cwd}", "command": ["true"]}},
    headers={{"Authorization": "Bearer " + os.environ["CLEANROOM_TOKEN"]}},
    verify=False,
    timeout=30,
)
print(r.status_code, r.json()["error"]["code"])
"""
