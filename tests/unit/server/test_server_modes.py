"""Least privilege on the host: private socket directories on every branch, lock files
never opened through symlinks, and a server whose files are private to its user."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import server_argv, wait_for_socket

from cleanroom.client import Client
from cleanroom.errors import InvalidRequest
from cleanroom.paths import runtime_dir
from cleanroom.server import ListenAddress, bind

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make files owned by another user")


def test_xdg_runtime_dir_is_checked_like_the_fallback(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_tmp / "xdg"))
    made = runtime_dir()
    assert made == short_tmp / "xdg" / "cleanroom"
    assert mode(made) == 0o700
    made.chmod(0o755)
    assert mode(runtime_dir()) == 0o700  # loosened: tightened again
    made.rmdir()
    made.symlink_to(short_tmp)  # a symlink in its place: refused
    with pytest.raises(PermissionError):
        runtime_dir()
    made.unlink()
    _needs_root()
    made.mkdir()
    os.chown(made, NOBODY, NOBODY)  # someone else's directory: refused
    with pytest.raises(PermissionError, match="not a directory owned by"):
        runtime_dir()


def test_lock_file_is_never_opened_through_a_symlink(short_tmp: Path) -> None:
    sock = short_tmp / "run" / "s.sock"
    sock.parent.mkdir(mode=0o700)
    target = short_tmp / "elsewhere"
    Path(f"{sock}.lock").symlink_to(target)
    with pytest.raises(InvalidRequest, match="cannot use"):
        bind(ListenAddress(scheme="unix", path=sock))
    assert not target.exists()
    assert not sock.exists()


@pytest.mark.parametrize("why", ["group-writable", "other-writable", "foreign-owner"])
def test_socket_directory_must_be_private(short_tmp: Path, why: str) -> None:
    directory = short_tmp / "run"
    directory.mkdir(mode=0o700)
    if why == "group-writable":
        directory.chmod(0o770)
    elif why == "other-writable":
        directory.chmod(0o1777)
    else:
        _needs_root()
        os.chown(directory, NOBODY, NOBODY)
    with pytest.raises(InvalidRequest, match="cannot use"):
        bind(ListenAddress(scheme="unix", path=directory / "s.sock"))
    assert not (directory / "s.sock").exists()


@pytest.fixture
def server_process(short_tmp: Path) -> Iterator[Path]:
    sock = short_tmp / "run" / "s.sock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        server_argv(f"unix://{sock}", short_tmp / "state"), stderr=subprocess.DEVNULL, env=env
    )
    try:
        wait_for_socket(sock, proc)
        yield sock
    finally:
        proc.terminate()
        proc.wait(30)


def test_server_files_are_private(server_process: Path, repo: Path) -> None:
    repo.chmod(0o755)
    (repo / "public.txt").write_text("x")
    (repo / "public.txt").chmod(0o644)
    with Client(f"unix://{server_process}") as client:
        result = client.exec(repo, ["sh", "-c", "echo hi; echo more > new.txt"])
    assert result.exit_code == 0
    run_dir = Path(result.run_dir)
    assert mode(run_dir) == 0o700
    assert mode(run_dir.parent) == 0o700  # the runs directory the server made
    # Everything the server wrote into the run directory is its user's alone.
    # (``guest-workspace`` is this test backend's stand-in for the guest's disk:
    # the guest restores the repository's own modes there, behind the 0700 run dir.)
    written = [p for p in run_dir.iterdir() if p.name != "guest-workspace"]
    assert {"run-observability.json", "stdout.log", "stderr.log", "plan.json"} <= {
        p.name for p in written
    }
    for path in written:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), (path, oct(mode(path)))
