"""TCP listeners against real clients: tokens on every request, TLS with a pinned
certificate, revocation without a restart (real server thread, real service,
agent-process guests; the CLI as real processes)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cli_run import ENTRY, cli, cli_env

from cleanroom.client import AsyncClient, Client
from cleanroom.client._tty import TerminalExit, TerminalOutput
from cleanroom.errors import (
    InvalidRequest,
    ServerNotTrusted,
    ServerUnavailable,
    TokenInvalid,
    Unauthenticated,
)
from cleanroom.server import (
    BoundListener,
    CleanroomServer,
    ServeSecurity,
    TlsFiles,
    certificate_fingerprint,
    needs_tls,
    parse_listen,
    self_signed,
)
from cleanroom.service import Service
from cleanroom.testing import ServerThread
from cleanroom.tokens import TokenStore

WRONG_PIN = "sha256:" + "ab" * 32


@pytest.fixture
def tokens(state: Path) -> TokenStore:
    """The token store the server under test reads (its state directory's)."""
    return TokenStore(state / "cleanroom" / "tokens.json")


@pytest.fixture
def tls(root: Path) -> TlsFiles:
    return self_signed(directory=root / "tls")


@pytest.fixture
def plain(service: Service, tokens: TokenStore) -> Iterator[str]:
    """A loopback TCP listener without TLS: ``tcp://127.0.0.1:PORT``."""
    with ServerThread(service, parse_listen("tcp://127.0.0.1:0")) as running:
        yield running.url


@pytest.fixture
def secure(service: Service, tokens: TokenStore, tls: TlsFiles) -> Iterator[str]:
    """A loopback TCP listener over TLS (self-signed): ``https://127.0.0.1:PORT``."""
    security = ServeSecurity(tokens=tokens, tls=tls, tls_on_loopback=True)
    with ServerThread(service, parse_listen("tcp://127.0.0.1:0"), security=security) as running:
        yield running.url


def test_every_request_needs_a_token(plain: str, tokens: TokenStore, repo: Path) -> None:
    base = "http://" + plain.removeprefix("tcp://")
    missing = httpx.get(base + "/healthz")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthenticated"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    for header in ("Bearer cr_nope", "Basic dXNlcjpwYXNz", "Bearer", "cr_nope"):
        wrong = httpx.get(base + "/v1/cleanrooms", headers={"Authorization": header})
        assert wrong.status_code == 401, header
        assert wrong.json()["error"]["code"] == "token_invalid"
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    body = {"cwd": str(repo), "command": ["true"]}
    assert httpx.post(base + "/v1/exec", json=body).status_code == 401  # no run started

    with Client(plain) as client, pytest.raises(Unauthenticated) as caught:
        client.list_cleanrooms()
    assert type(caught.value) is Unauthenticated
    token = tokens.create("ci")
    with Client(plain, token=token) as client:
        result = client.exec(repo, ["sh", "-c", "echo remote"])
    assert (result.exit_code, result.stdout) == (0, "remote\n")


def test_revocation_takes_effect_without_a_restart(
    plain: str, tokens: TokenStore, repo: Path, root: Path, state: Path
) -> None:
    env = {**cli_env(root), "XDG_STATE_HOME": str(state)}
    made = cli("token", "create", "ci", env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.decode().strip()
    keep = tokens.create("other")
    listed = cli("token", "list", "--json", env=env)
    assert [t["name"] for t in json.loads(listed.stdout)["tokens"]] == ["ci", "other"]
    assert token not in (state / "cleanroom" / "tokens.json").read_text()

    with Client(plain, token=token) as client:
        assert client.health().ok
        assert cli("token", "revoke", "ci", env=env).returncode == 0
        with pytest.raises(TokenInvalid):
            client.health()
    with Client(plain, token=keep) as client:
        assert client.exec(repo, ["true"]).exit_code == 0
    gone = cli("token", "revoke", "ci", env=env)
    assert (gone.returncode, b"error[not_found]" in gone.stderr) == (66, True)


def test_the_unix_socket_needs_no_token(
    host: str, repo: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Client(host) as client:
        assert client.exec(repo, ["true"]).exit_code == 0
    # Credentials are read for TCP servers only: a bad token file cannot break local use.
    monkeypatch.setenv("CLEANROOM_TOKEN_FILE", str(root / "missing"))
    with Client(host) as client:
        assert client.health().ok
    with pytest.raises(InvalidRequest, match="token file"):
        Client("tcp://127.0.0.1:1")


def test_token_file_and_environment(
    plain: str, tokens: TokenStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tokens.create("ci")
    file = root / "token"
    file.write_text(token + "\n")
    file.chmod(0o600)
    with Client(plain, token_file=file) as client:
        assert client.health().ok
    monkeypatch.setenv("CLEANROOM_TOKEN", token)
    with Client(plain) as client:
        assert client.health().ok
    file.chmod(0o644)
    with pytest.raises(InvalidRequest, match="chmod 600"):
        Client(plain, token_file=file)


def test_tls_with_a_pinned_certificate(secure: str, tokens: TokenStore, tls: TlsFiles) -> None:
    assert secure.startswith("https://127.0.0.1:")
    token = tokens.create("ci")
    with Client(secure, token=token, tls_fingerprint=tls.fingerprint) as client:
        assert client.health().ok
    colons = ":".join(tls.fingerprint.removeprefix("sha256:")[i : i + 2] for i in range(0, 64, 2))
    tcp = "tcp://" + secure.removeprefix("https://")  # a pin makes tcp:// speak TLS
    with Client(tcp, token=token, tls_fingerprint="SHA256:" + colons.upper()) as client:
        assert client.health().ok
    with Client(secure, token=token, tls_ca=tls.cert) as client:  # the cert as its own CA
        assert client.health().ok
    with (
        Client(secure, token=token, tls_fingerprint=WRONG_PIN) as client,
        pytest.raises(ServerNotTrusted) as caught,
    ):
        client.health()
    assert caught.value.details["seen"] == tls.fingerprint
    with Client(secure, token=token) as client, pytest.raises(ServerNotTrusted):
        client.health()  # self-signed: not trusted by the system's CAs
    with Client(tcp, token=token) as client, pytest.raises(ServerUnavailable) as plain_to_tls:
        client.health()  # plain HTTP to a TLS listener is no answer at all
    assert type(plain_to_tls.value) is ServerUnavailable


def test_tls_without_a_token_is_unauthenticated(secure: str, tls: TlsFiles) -> None:
    with (
        Client(secure, tls_fingerprint=tls.fingerprint) as client,
        pytest.raises(Unauthenticated),
    ):
        client.health()


def test_async_client_over_tls(secure: str, tokens: TokenStore, tls: TlsFiles, repo: Path) -> None:
    token = tokens.create("ci")

    async def main() -> None:
        async with AsyncClient(secure, token=token, tls_fingerprint=tls.fingerprint) as client:
            result = await client.exec(repo, ["sh", "-c", "echo async"])
            assert result.stdout == "async\n"
            events = [event async for event in client.exec_stream(repo, ["true"])]
            assert events
        async with AsyncClient(secure, token=token, tls_fingerprint=WRONG_PIN) as client:
            with pytest.raises(ServerNotTrusted):
                await client.health()
        async with AsyncClient(secure, token=token) as client:
            with pytest.raises(ServerNotTrusted):
                await client.health()
        async with AsyncClient(secure, tls_fingerprint=tls.fingerprint) as client:
            with pytest.raises(Unauthenticated):
                await client.health()

    asyncio.run(main())


def test_terminal_over_tls(secure: str, tokens: TokenStore, tls: TlsFiles, repo: Path) -> None:
    token = tokens.create("ci")
    with Client(secure, token=token, tls_fingerprint=tls.fingerprint) as client:
        session = client.exec_tty(repo, ["sh", "-c", "echo tty-ok"], rows=24, cols=80)
        with session:
            events = list(session.events())
    shown = b"".join(e.data for e in events if isinstance(e, TerminalOutput))
    assert b"tty-ok" in shown
    assert isinstance(events[-1], TerminalExit)
    with (
        Client(secure, tls_fingerprint=tls.fingerprint) as client,
        pytest.raises(Unauthenticated),
    ):
        client.exec_tty(repo, ["true"], rows=24, cols=80)
    with (
        Client(secure, token=token, tls_fingerprint=WRONG_PIN) as client,
        pytest.raises(ServerNotTrusted),
    ):
        client.exec_tty(repo, ["true"], rows=24, cols=80)


def test_async_terminal_over_tls(
    secure: str, tokens: TokenStore, tls: TlsFiles, repo: Path
) -> None:
    token = tokens.create("ci-async")

    async def events() -> list[object]:
        async with AsyncClient(secure, token=token, tls_fingerprint=tls.fingerprint) as client:
            session = await client.exec_tty(repo, ["sh", "-c", "echo tty-ok"], rows=24, cols=80)
            async with session:
                return [event async for event in session.events()]

    async def refused(token: str | None, pin: str) -> None:
        async with AsyncClient(secure, token=token, tls_fingerprint=pin) as client:
            await client.exec_tty(repo, ["true"], rows=24, cols=80)

    shown = asyncio.run(events())
    assert b"tty-ok" in b"".join(e.data for e in shown if isinstance(e, TerminalOutput))
    assert isinstance(shown[-1], TerminalExit)
    with pytest.raises(Unauthenticated):
        asyncio.run(refused(None, tls.fingerprint))
    with pytest.raises(ServerNotTrusted):
        asyncio.run(refused(token, WRONG_PIN))


def test_a_remote_listener_requires_tls(service: Service) -> None:
    remote = parse_listen("tcp://192.0.2.1:8765")
    assert needs_tls([remote], tls_on_loopback=False)
    assert not needs_tls([parse_listen("tcp://127.0.0.1:8765")], tls_on_loopback=False)
    assert needs_tls([parse_listen("tcp://[::1]:8765")], tls_on_loopback=True)
    assert not needs_tls([parse_listen("unix:///x.sock")], tls_on_loopback=True)
    with socket.socket() as unbound, pytest.raises(InvalidRequest, match="requires TLS"):
        CleanroomServer(service, [BoundListener(remote, unbound)])


def test_no_token_in_clear_text_off_loopback() -> None:
    with pytest.raises(InvalidRequest, match="clear text"):
        Client("tcp://192.0.2.1:8765", token="cr_x")
    Client("https://192.0.2.1:8765", token="cr_x")  # fine: TLS
    Client("tcp://192.0.2.1:8765")  # fine: nothing secret to send
    with pytest.raises(InvalidRequest):
        Client("tcp://127.0.0.1:1", tls_fingerprint="sha256:xyz")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_cleanroom_serve_over_tls(root: Path) -> None:
    """``cleanroom serve --tls`` as a real process: it makes and prints its certificate;
    the CLI pins it and brings a token."""
    env = cli_env(root)
    address = f"tcp://127.0.0.1:{_free_port()}"
    log = root / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-c", ENTRY, "serve", "--listen", address, "--tls"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 60
        while b'"listening"' not in log.read_bytes():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        prefix = "cleanroom: TLS certificate fingerprint "
        lines = log.read_text().splitlines()
        fingerprint = next(x for x in lines if x.startswith(prefix)).removeprefix(prefix)
        cert = root / "xdg-state" / "cleanroom" / "tls" / "server.crt"
        assert certificate_fingerprint(cert) == fingerprint
        assert (cert.parent / "server.key").stat().st_mode & 0o077 == 0

        token = cli("token", "create", "ci", env=env).stdout.decode().strip()
        pinned = ("--host", address, "--tls-fingerprint", fingerprint)
        done = cli("ls", *pinned, env={**env, "CLEANROOM_TOKEN": token})
        assert (done.returncode, done.stderr) == (0, b"")
        done = cli("ls", *pinned, env=env)
        assert done.returncode == 77
        assert b"error[unauthenticated]" in done.stderr
        wrong = ("--host", address, "--tls-fingerprint", WRONG_PIN)
        done = cli("ls", *wrong, env={**env, "CLEANROOM_TOKEN": token})
        assert done.returncode == 69
        assert b"error[server_not_trusted]" in done.stderr
        assert cli("token", "revoke", "ci", env=env).returncode == 0
        done = cli("ls", *pinned, env={**env, "CLEANROOM_TOKEN": token})
        assert b"error[token_invalid]" in done.stderr
    finally:
        server.terminate()
        server.wait(30)
