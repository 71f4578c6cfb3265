"""The workspace walker pinned where a mutation check found it loose: every field of
every archived member, the counts, allocated bytes with hard links, the size caps at
their limit and one past, and the errors' codes and details."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from cleanroom import workspace_tree as workspace_module
from cleanroom.config_limits import LimitsConfig
from cleanroom.errors import InvalidRequest, WorkspaceTooLarge
from cleanroom.service.workspace import (
    ArchiveStats,
    archive_workspace,
    check_workspace_size,
    scan_workspace,
)


def _tree(ws: Path) -> None:
    """a/ (0750) holding b.txt (0640, 5 bytes) and c -> b.txt; d.bin (3 bytes) with a
    hard link z.bin; a FIFO in a/; fixed, distinct mtimes."""
    (ws / "a").mkdir()
    (ws / "a" / "b.txt").write_bytes(b"hello")
    (ws / "a" / "b.txt").chmod(0o640)
    (ws / "a" / "c").symlink_to("b.txt")
    os.mkfifo(ws / "a" / "pipe")
    (ws / "d.bin").write_bytes(b"xyz")
    os.link(ws / "d.bin", ws / "z.bin")
    os.utime(ws / "a" / "b.txt", (1_000_000_000, 1_000_000_001.75))
    os.utime(ws / "d.bin", (1_000_000_000, 1_200_000_000))
    os.utime(ws / "a" / "c", (1_000_000_000, 1_300_000_000), follow_symlinks=False)
    (ws / "a").chmod(0o750)
    os.utime(ws / "a", (1_000_000_000, 1_100_000_000))


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    _tree(root)
    return root


def test_every_member_field_is_what_the_tree_says(ws: Path) -> None:
    buf = io.BytesIO()
    archive_workspace(ws, buf)
    buf.seek(0)
    uid, gid = os.getuid(), os.getgid()
    with tarfile.open(fileobj=buf) as tar:
        members = tar.getmembers()
        got = [(m.name, m.type, m.mode, m.uid, m.gid, m.mtime, m.size, m.linkname) for m in members]
        assert got == [
            ("a", tarfile.DIRTYPE, 0o750, uid, gid, 1_100_000_000, 0, ""),
            ("a/b.txt", tarfile.REGTYPE, 0o640, uid, gid, 1_000_000_001, 5, ""),
            ("a/c", tarfile.SYMTYPE, 0o777, uid, gid, 1_300_000_000, 0, "b.txt"),
            ("d.bin", tarfile.REGTYPE, 0o644 & ~_umask(), uid, gid, 1_200_000_000, 3, ""),
            ("z.bin", tarfile.LNKTYPE, 0o644 & ~_umask(), uid, gid, 1_200_000_000, 0, "d.bin"),
        ]
        data = tar.extractfile("a/b.txt")
        assert data is not None
        assert data.read() == b"hello"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_counts_and_allocated_bytes(ws: Path) -> None:
    one_block = (ws / "d.bin").stat().st_blocks * 512
    assert one_block > 0
    expected = ArchiveStats(
        files=3,
        directories=1,
        symlinks=1,
        bytes=5 + 3 + 3,  # apparent sizes: a hard link counts each time
        archive_bytes=0,
        skipped=("a/pipe",),
        allocated=(ws / "a" / "b.txt").stat().st_blocks * 512 + one_block,  # ...blocks once
    )
    assert scan_workspace(ws) == expected
    buf = io.BytesIO(b"preamble")
    buf.seek(0, io.SEEK_END)
    stats = archive_workspace(ws, buf)
    assert stats.archive_bytes == len(buf.getvalue()) - len(b"preamble")
    assert stats == ArchiveStats(**{**expected.__dict__, "archive_bytes": stats.archive_bytes})


def test_a_lone_file_counts_its_blocks_each_time(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("a", "b"):
        (ws / name).write_bytes(b"same content")
    blocks = sum((ws / name).stat().st_blocks * 512 for name in ("a", "b"))
    assert scan_workspace(ws).allocated == blocks > 0


def test_hard_links_in_different_directories_count_once(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "x").mkdir(parents=True)
    (ws / "x" / "f").write_bytes(b"1" * 5000)
    os.link(ws / "x" / "f", ws / "g")
    os.link(ws / "x" / "f", ws / "h")
    stats = scan_workspace(ws)
    assert (stats.files, stats.bytes) == (3, 15000)
    assert stats.allocated == (ws / "g").stat().st_blocks * 512


def test_the_workspace_root_may_be_a_symlink(ws: Path, tmp_path: Path) -> None:
    link = tmp_path / "cwd"
    link.symlink_to(ws)
    assert scan_workspace(link).files == 3


def test_not_a_directory_names_the_workspace(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(InvalidRequest) as info:
        scan_workspace(missing)
    assert str(info.value) == f"invalid_request: workspace {missing} is not a directory"
    assert info.value.details == {"cwd": str(missing)}


def test_an_unwritable_destination_says_why(ws: Path, tmp_path: Path) -> None:
    dest = tmp_path / "no-such-dir" / "ws.tar"
    with pytest.raises(InvalidRequest) as info:
        archive_workspace(ws, dest)
    assert str(info.value) == (
        f"invalid_request: cannot archive workspace {ws}: No such file or directory"
    )
    assert info.value.details == {"cwd": str(ws), "path": str(dest)}


def _stats(allocated: int, apparent: int) -> ArchiveStats:
    return ArchiveStats(1, 0, 0, apparent, 0, (), allocated)


def test_size_caps_at_their_limit_pass() -> None:
    limits = LimitsConfig(workspace_bytes=100, workspace_apparent_bytes=1000)
    check_workspace_size(_stats(100, 1000), limits)


def test_allocated_cap_one_past() -> None:
    limits = LimitsConfig(workspace_bytes=100, workspace_apparent_bytes=1000)
    with pytest.raises(WorkspaceTooLarge) as info:
        check_workspace_size(_stats(101, 5), limits)
    assert str(info.value) == (
        "workspace_too_large: the workspace holds 101 bytes, more than limits.workspace_bytes (100)"
    )
    assert info.value.details == {"limit": "workspace_bytes", "bytes": 101, "max_bytes": 100}


def test_apparent_cap_one_past() -> None:
    limits = LimitsConfig(workspace_bytes=100, workspace_apparent_bytes=1000)
    with pytest.raises(WorkspaceTooLarge) as info:
        check_workspace_size(_stats(5, 1001), limits)
    assert info.value.details == {
        "limit": "workspace_apparent_bytes",
        "bytes": 1001,
        "max_bytes": 1000,
    }
    assert "more than limits.workspace_apparent_bytes (1000)" in str(info.value)


def test_only_multiply_linked_files_become_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file moved deeper into the tree while the walk runs is met twice under one
    inode with a single link: the second is archived as a file, not a link to the first."""
    ws = tmp_path / "ws"
    (ws / "z").mkdir(parents=True)
    (ws / "a").write_bytes(b"moved")
    real_openat = workspace_module._openat

    def openat(name: str, flags: int, dir_fd: int) -> int:
        if name == "z":
            (ws / "a").rename(ws / "z" / "a2")
        return real_openat(name, flags, dir_fd)

    monkeypatch.setattr(workspace_module, "_openat", openat)
    buf = io.BytesIO()
    archive_workspace(ws, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        moved = tar.getmember("z/a2")
        assert (moved.type, moved.linkname, moved.size) == (tarfile.REGTYPE, "", 5)


def test_every_directory_and_every_hard_link_group_counts(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "a" / "b").mkdir(parents=True)
    (ws / "c").mkdir()
    for group in ("x", "y"):
        (ws / f"{group}1").write_bytes(group.encode() * 5000)
        os.link(ws / f"{group}1", ws / "a" / f"{group}2")
    stats = scan_workspace(ws)
    assert (stats.directories, stats.files, stats.bytes) == (3, 4, 20000)
    blocks = (ws / "x1").stat().st_blocks + (ws / "y1").stat().st_blocks
    assert stats.allocated == blocks * 512


def test_a_failure_mid_walk_names_the_workspace_and_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_bytes(b"f")

    def openat(name: str, flags: int, dir_fd: int) -> int:
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr(workspace_module, "_openat", openat)
    with pytest.raises(InvalidRequest) as info:
        archive_workspace(ws, io.BytesIO())
    assert str(info.value) == f"invalid_request: cannot archive workspace {ws}: Permission denied"
    assert info.value.details == {"cwd": str(ws), "path": "f"}
