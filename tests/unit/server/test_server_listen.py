"""Listeners: socket permissions, stale sockets, one server per socket, loopback-only TCP."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import httpx
import pytest

from cleanroom.errors import InvalidRequest, ServerUnavailable
from cleanroom.paths import default_socket_path
from cleanroom.server import ListenAddress, bind, parse_listen
from cleanroom.service import Service
from cleanroom.testing import ServerThread
from cleanroom.tokens import TokenStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_parse_listen() -> None:
    assert parse_listen("unix:///run/x.sock") == ListenAddress(
        scheme="unix", path=Path("/run/x.sock")
    )
    assert parse_listen("tcp://127.0.0.1:8080") == ListenAddress(
        scheme="tcp", host="127.0.0.1", port=8080
    )
    assert parse_listen("tcp://[::1]:9").url() == "tcp://[::1]:9"
    for bad in ("unix://relative.sock", "tcp://127.0.0.1", "tcp://h:notaport", "http://h:1", "x"):
        with pytest.raises(InvalidRequest):
            parse_listen(bad)


def test_socket_is_0600_in_a_0700_dir(server: ServerThread, sock: Path) -> None:
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    assert mode(sock) == 0o600
    assert mode(sock.parent) == 0o700


def test_default_socket_dir_is_0700(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_tmp))
    path = default_socket_path()
    listener = bind(ListenAddress(scheme="unix", path=path))
    try:
        assert mode(path.parent) == 0o700
        assert mode(path) == 0o600
    finally:
        listener.close()
    assert not path.exists()


def test_stale_socket_is_replaced(service: Service, sock: Path) -> None:
    sock.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))  # a socket file whose server is gone
    dead.close()
    assert sock.exists()
    with ServerThread(service, ListenAddress(scheme="unix", path=sock)):
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://x") as client:
            assert client.get("/healthz").json()["ok"] is True
    assert not sock.exists()


def test_second_server_is_refused(server: ServerThread, sock: Path) -> None:
    with pytest.raises(ServerUnavailable, match="already listening") as caught:
        bind(ListenAddress(scheme="unix", path=sock))
    assert caught.value.details["reason"] == "address_in_use"
    assert caught.value.exit_code == 69
    assert sock.exists()  # the first server's socket is untouched


def test_live_socket_without_lock_is_not_stolen(short_tmp: Path) -> None:
    path = short_tmp / "other.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(1)
    try:
        with pytest.raises(ServerUnavailable):
            bind(ListenAddress(scheme="unix", path=path))
        assert path.exists()
    finally:
        other.close()


def test_non_socket_file_is_not_replaced(short_tmp: Path) -> None:
    path = short_tmp / "precious.txt"
    path.write_text("keep me")
    with pytest.raises(InvalidRequest, match="not a socket"):
        bind(ListenAddress(scheme="unix", path=path))
    assert path.read_text() == "keep me"


def test_tcp_is_loopback_only_by_default() -> None:
    with pytest.raises(InvalidRequest, match="--allow-remote"):
        bind(parse_listen("tcp://0.0.0.0:0"))


def test_tcp_loopback_serves(service: Service) -> None:
    token = TokenStore().create("test")  # a TCP listener wants a token on every request
    with ServerThread(service, parse_listen("tcp://127.0.0.1:0")) as running:
        assert running.url.startswith("tcp://127.0.0.1:")
        base = "http://" + running.url.removeprefix("tcp://")
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(base + "/healthz", headers=auth).json()["ok"] is True


def test_umask_is_restored(short_tmp: Path) -> None:
    before = os.umask(0o022)
    os.umask(before)
    listener = bind(ListenAddress(scheme="unix", path=short_tmp / "u.sock"))
    listener.close()
    after = os.umask(before)
    assert after == before
