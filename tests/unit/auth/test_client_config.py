"""The client configuration file (``client.yaml``): strict keys, and the server,
token file and certificate pin it names, below the flags and the environment.

Real TLS listener (self-signed, loopback), real service (agent-process guests),
the Python client and the ``cleanroom`` CLI as a process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import cli, cli_env

from cleanroom.client import Client
from cleanroom.client._config import (
    ClientConfig,
    client_config_file,
    load_client_config,
    parse_client_config,
)
from cleanroom.errors import ConfigInvalid, ServerNotTrusted, ServerUnavailable
from cleanroom.server import ServeSecurity, TlsFiles, parse_listen, self_signed
from cleanroom.service import Service
from cleanroom.testing import ServerThread
from cleanroom.tokens import TokenStore

WRONG_PIN = "sha256:" + "ab" * 32
_CLIENT_ENV = (
    "CLEANROOM_HOST",
    "CLEANROOM_TOKEN",
    "CLEANROOM_TOKEN_FILE",
    "CLEANROOM_TLS_FINGERPRINT",
    "CLEANROOM_TLS_CA",
)


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as caught:
        parse_client_config(text, "client.yaml")
    problems = caught.value.details["problems"]
    assert isinstance(problems, list)
    return problems


def test_the_file_is_strict() -> None:
    pin = "SHA256:" + ":".join(["AB"] * 32)
    text = f"host: tcp://h:1\ntoken_file: /t/token\ntls_fingerprint: '{pin}'\ntls_ca: /t/ca.pem\n"
    assert parse_client_config(text, "client.yaml") == ClientConfig(
        host="tcp://h:1",
        token_file=Path("/t/token"),
        tls_fingerprint="sha256:" + "ab" * 32,
        tls_ca=Path("/t/ca.pem"),
    )
    assert parse_client_config("", "client.yaml") == ClientConfig()
    nulls = "host: null\ntoken_file: null\ntls_fingerprint: null\ntls_ca: null\n"
    assert parse_client_config(nulls, "client.yaml") == ClientConfig()
    assert parse_client_config("token_file: ~/tok\n", "c").token_file == Path("~/tok").expanduser()
    assert _problems("token: cr_secret\n")[0].startswith("client.yaml:1:1: ")
    assert "token" in _problems("token: cr_secret\n")[0]
    assert _problems("tls_fingerprint: nope\n") == [
        "client.yaml:1:18: tls_fingerprint: not a SHA-256 certificate fingerprint: 'nope'"
    ]
    assert _problems("token_file: rel/token\n") == [
        "client.yaml:1:13: token_file: must be an absolute path, got 'rel/token'"
    ]
    assert len(_problems("host: 8765\ntls_ca: 3\n")) == 2
    assert len(_problems("- a list\n")) == 1


def test_a_missing_file_is_no_settings(tmp_path: Path) -> None:
    assert load_client_config(tmp_path / "absent.yaml") == ClientConfig()
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigInvalid, match="UTF-8"):
        load_client_config(tmp_path / "bad.yaml")


@pytest.fixture
def tokens(state: Path) -> TokenStore:
    return TokenStore(state / "cleanroom" / "tokens.json")


@pytest.fixture
def tls(root: Path) -> TlsFiles:
    return self_signed(directory=root / "tls")


@pytest.fixture
def secure(service: Service, tokens: TokenStore, tls: TlsFiles) -> Iterator[str]:
    """``tcp://127.0.0.1:PORT`` of a loopback listener over TLS (self-signed)."""
    security = ServeSecurity(tokens=tokens, tls=tls, tls_on_loopback=True)
    with ServerThread(service, parse_listen("tcp://127.0.0.1:0"), security=security) as running:
        yield "tcp://" + running.url.split("://", 1)[1]


@pytest.fixture
def configured(
    secure: str, tokens: TokenStore, tls: TlsFiles, root: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A client.yaml naming ``secure``, a token file and the certificate's pin; no
    client settings in the environment."""
    for name in _CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(root / "xdg-config"))
    token_file = root / "token"
    token_file.write_text(tokens.create("from-file") + "\n")
    token_file.chmod(0o600)
    path = client_config_file()
    path.parent.mkdir(parents=True)
    path.write_text(
        f"host: {secure}\ntoken_file: {token_file}\ntls_fingerprint: {tls.fingerprint}\n"
    )
    return path


def test_the_file_names_the_server_and_how_to_trust_it(configured: Path, repo: Path) -> None:
    with Client() as client:
        assert client.endpoint.credentials.tls_fingerprint is not None
        assert client.endpoint.tls
        result = client.exec(repo, ["sh", "-c", "echo from-config"])  # uploaded, over TLS
    assert (result.exit_code, result.stdout) == (0, "from-config\n")


def test_the_cli_reads_the_file(configured: Path, root: Path) -> None:
    env = {**cli_env(root), "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    for name in _CLIENT_ENV:
        env.pop(name, None)
    done = cli("ls", env=env)
    assert done.returncode == 0, done.stderr
    done = cli("ls", "--tls-fingerprint", WRONG_PIN, env=env)  # a flag beats the file
    assert done.returncode == 69
    assert b"error[server_not_trusted]" in done.stderr


def test_flags_and_the_environment_override_the_file(
    configured: Path, secure: str, tls: TlsFiles, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEANROOM_TLS_FINGERPRINT", WRONG_PIN)
    with Client() as client, pytest.raises(ServerNotTrusted):
        client.health()
    with Client(tls_fingerprint=tls.fingerprint) as client:  # the argument beats both
        assert client.health().ok
    monkeypatch.delenv("CLEANROOM_TLS_FINGERPRINT")
    monkeypatch.setenv("CLEANROOM_HOST", f"unix://{root}/nobody.sock")
    with Client() as client, pytest.raises(ServerUnavailable):
        client.health()
    monkeypatch.setenv("CLEANROOM_TOKEN", "cr_from-the-environment")
    monkeypatch.delenv("CLEANROOM_HOST")
    with Client() as client:
        assert client.endpoint.credentials.token == "cr_from-the-environment"


def test_a_broken_file_does_not_break_a_named_socket(
    configured: Path, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured.write_text("hots: tcp://typo:1\n")
    with Client(host) as client:
        assert client.health().ok
    monkeypatch.setenv("CLEANROOM_HOST", host)
    with Client() as client:
        assert client.health().ok
    monkeypatch.delenv("CLEANROOM_HOST")
    with pytest.raises(ConfigInvalid, match="client config"):
        Client()
