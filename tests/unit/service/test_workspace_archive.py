"""The workspace archiver: what goes in, what is skipped, nothing outside the tree."""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from cleanroom import workspace_tree as workspace_module
from cleanroom.errors import ConfigInvalid, InvalidRequest
from cleanroom.service.workspace import (
    STAGE_IN_MEMORY_LIMIT,
    archive_workspace,
    iter_file_chunks,
    remove_dead_stagings,
    stage_workspace,
    staging_dir,
    staging_root,
)


def _tree(root: Path, outside: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    (root / "link-inside").symlink_to("src/pkg/mod.py")
    (root / "link-outside").symlink_to(outside)
    (root / "dirlink").symlink_to(outside.parent)
    os.link(root / "run.sh", root / "hardlink.sh")
    os.mkfifo(root / "fifo")


def test_archive_keeps_files_modes_and_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    ws = tmp_path / "ws"
    ws.mkdir()
    _tree(ws, secret)
    dest = tmp_path / "ws.tar"

    stats = archive_workspace(ws, dest)

    with tarfile.open(dest) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["run.sh"].mode & 0o777 == 0o755
        assert members["link-inside"].issym()
        assert members["link-inside"].linkname == "src/pkg/mod.py"
        assert members["link-outside"].issym()
        assert members["dirlink"].issym()
        assert members["empty"].isdir()
        assert members["hardlink.sh"].islnk() or members["run.sh"].islnk()
        assert "fifo" not in members
        # Nothing behind a symlink was followed: the secret's content is not in the archive.
        for m in tar.getmembers():
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                assert b"do not read" not in f.read()
    assert stats.skipped == ("fifo",)
    assert stats.files == 3  # mod.py, run.sh, hardlink.sh
    assert stats.symlinks == 3
    assert stats.archive_bytes == dest.stat().st_size


def test_archive_skips_sockets(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(ws / "s.sock"))
        stats = archive_workspace(ws, tmp_path / "a.tar")
    finally:
        sock.close()
    assert stats.skipped == ("s.sock",)


def test_archive_rejects_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        archive_workspace(tmp_path / "nope", tmp_path / "a.tar")


def test_archive_io_error_is_invalid_request(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    with pytest.raises(InvalidRequest) as info:
        archive_workspace(ws, tmp_path / "missing-dir" / "a.tar")
    assert isinstance(info.value.__cause__, OSError)


def test_iter_file_chunks_bounded(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 1000)
    chunks = list(iter_file_chunks(p, chunk=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]


def test_archive_into_memory_matches_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    ws = tmp_path / "ws"
    ws.mkdir()
    _tree(ws, secret)
    buf = io.BytesIO()
    in_memory = archive_workspace(ws, buf)
    on_disk = archive_workspace(ws, tmp_path / "ws.tar")
    assert in_memory == on_disk
    assert buf.getvalue() == (tmp_path / "ws.tar").read_bytes()


def _swap_when_opened(monkeypatch: pytest.MonkeyPatch, victim: Path, target: Path) -> None:
    """When the walk opens ``victim`` (after looking at it), replace it first
    with a symlink to ``target``: the race a process in the repository could run."""
    real_openat = workspace_module._openat

    def racing_openat(name: str, flags: int, dir_fd: int) -> int:
        if name == victim.name and not victim.is_symlink():
            if victim.is_dir():
                shutil.rmtree(victim)
            else:
                victim.unlink()
            victim.symlink_to(target)
        return real_openat(name, flags, dir_fd)

    monkeypatch.setattr(workspace_module, "_openat", racing_openat)


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "pkg").mkdir(parents=True)
    (outside / "pkg" / "mod.py").write_text("do not read")
    (outside / "run.sh").write_text("do not read")
    return outside


@pytest.mark.parametrize("swapped", ["src", "run.sh"])
def test_a_path_swapped_for_a_symlink_mid_walk_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swapped: str
) -> None:
    """Between the walk's look at an entry and its open, something replaces the
    entry with a symlink to a secret outside the tree: the open refuses it."""
    outside = _outside(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    _tree(ws, outside / "run.sh")
    _swap_when_opened(
        monkeypatch, ws / swapped, outside if swapped == "src" else outside / "run.sh"
    )
    buf = io.BytesIO()
    with pytest.raises(InvalidRequest) as info:
        archive_workspace(ws, buf)
    assert isinstance(info.value.__cause__, OSError)
    assert b"do not read" not in buf.getvalue()


def test_a_file_swapped_for_a_fifo_mid_walk_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open follows no symlink, but a FIFO (or a device) opens fine: the walk
    re-checks what it opened and refuses anything but a regular file."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "data.txt").write_text("regular when looked at\n")
    real_openat = workspace_module._openat

    def racing_openat(name: str, flags: int, dir_fd: int) -> int:
        if name == "data.txt" and not (ws / name).is_fifo():
            (ws / name).unlink()
            os.mkfifo(ws / name)
        return real_openat(name, flags, dir_fd)

    monkeypatch.setattr(workspace_module, "_openat", racing_openat)
    buf = io.BytesIO()
    with pytest.raises(InvalidRequest, match="stopped being a regular file"):
        archive_workspace(ws, buf)


def _listing(root: Path) -> dict[str, tuple[str, int, str]]:
    out: dict[str, tuple[str, int, str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        if kind == "file" and not stat.S_ISREG(st.st_mode):
            kind = "special"  # never opened: a FIFO would block
        detail = str(path.readlink()) if kind == "link" else ""
        if kind == "file":
            detail = f"{path.read_text()}|{st.st_nlink}"
        out[str(path.relative_to(root))] = (kind, st.st_mode & 0o7777, detail)
    return out


def test_stage_workspace_is_a_private_copy_without_special_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    ws = tmp_path / "ws"
    ws.mkdir()
    _tree(ws, secret)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    staged, stats = stage_workspace(ws, run_dir)
    assert staged.stat().st_mode & 0o777 == 0o700
    expected = _listing(ws)
    del expected["fifo"]
    assert _listing(staged) == expected  # modes, links and the hard link as they were
    assert stats.skipped == ("fifo",)
    assert sorted(p.name for p in run_dir.iterdir()) == ["workspace-seed"]  # no archive left


def test_stage_workspace_fails_cleanly_on_a_mid_walk_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = _outside(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    _tree(ws, outside / "pkg" / "mod.py")
    _swap_when_opened(monkeypatch, ws / "src" / "pkg", outside / "pkg")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(InvalidRequest):
        stage_workspace(ws, run_dir)
    assert list(run_dir.iterdir()) == []


def test_small_workspaces_stage_in_memory_and_dead_stagings_go(tmp_path: Path) -> None:
    mine = staging_root(1024, tmp_path)
    try:
        assert mine.parent == staging_dir() != Path("/dev/shm")  # this test run's own
        assert mine.stat().st_mode & 0o777 == 0o700
        assert staging_root(STAGE_IN_MEMORY_LIMIT + 1, tmp_path) == tmp_path
        # A staging directory of a process that is gone (pid_max is at most 2**22).
        dead = staging_dir() / f"cleanroom-stage-{2**22 + 1}-test"
        dead.mkdir()
        assert dead.name in remove_dead_stagings()
        assert not dead.exists()
        assert mine.exists()  # ours: this process lives
    finally:
        shutil.rmtree(mine, ignore_errors=True)


def test_staging_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLEANROOM_STAGING_DIR", str(tmp_path))
    assert staging_dir() == tmp_path
    assert staging_root(10, tmp_path / "run").parent == tmp_path
    monkeypatch.setenv("CLEANROOM_STAGING_DIR", "relative")
    with pytest.raises(ConfigInvalid):
        staging_dir()
    monkeypatch.delenv("CLEANROOM_STAGING_DIR")
    assert staging_dir() == Path("/dev/shm")
