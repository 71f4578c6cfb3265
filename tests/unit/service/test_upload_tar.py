"""The uploaded-workspace extractor against real tar streams, well-formed and hostile."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from cleanroom.errors import WorkspaceInvalid, WorkspaceTooLarge
from cleanroom.service.upload_tar import UploadLimits, UploadStats, extract_upload
from cleanroom.workspace_tree import archive_workspace

BIG = UploadLimits(apparent_bytes=1 << 30, allocated_bytes=1 << 30)


def _reader(data: bytes, piece: int = 1000) -> Callable[[int], bytes]:
    """Hands out the stream in small pieces, as a network body would."""
    stream = io.BytesIO(data)
    return lambda n: stream.read(min(n, piece))


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755
    return info, b""


def _extract(tmp_path: Path, data: bytes, limits: UploadLimits = BIG) -> tuple[Path, UploadStats]:
    dest = tmp_path / "dest"
    dest.mkdir()
    return dest, extract_upload(_reader(data), dest, limits)


def _refused(tmp_path: Path, data: bytes, limits: UploadLimits = BIG) -> WorkspaceInvalid:
    with pytest.raises(WorkspaceInvalid) as caught:
        _extract(tmp_path, data, limits)
    assert caught.value.code == "workspace_invalid"
    return caught.value


def test_round_trip_of_the_walkers_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "deep").mkdir(parents=True)
    (src / "cleanroom.yaml").write_text("version: 1\n")
    (src / "pkg" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "pkg" / "run.sh").chmod(0o755)
    (src / "pkg" / "deep" / "data.bin").write_bytes(os.urandom(300_000))
    (src / "pkg" / "up").symlink_to("../cleanroom.yaml")
    (src / "pkg" / "deep" / "sib").symlink_to("data.bin")
    os.link(src / "pkg" / "run.sh", src / "again.sh")
    os.mkfifo(src / "fifo")  # skipped by the walker
    buf = io.BytesIO()
    archive_workspace(src, buf)
    dest, stats = _extract(tmp_path, buf.getvalue())
    assert (stats.files, stats.symlinks, stats.hardlinks) == (3, 2, 1)
    assert stats.bytes == 11 + 18 + 300_000
    assert stats.archive_bytes == len(buf.getvalue())
    assert (dest / "pkg" / "deep" / "data.bin").read_bytes() == (
        src / "pkg" / "deep" / "data.bin"
    ).read_bytes()
    assert (dest / "pkg" / "up").readlink() == Path("../cleanroom.yaml")
    assert (dest / "pkg" / "up").read_text() == "version: 1\n"
    assert (dest / "pkg" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (dest / "again.sh").stat().st_ino == (dest / "pkg" / "run.sh").stat().st_ino
    assert not (dest / "fifo").exists()
    assert (dest / "pkg" / "run.sh").stat().st_mtime == int(
        (src / "pkg" / "run.sh").stat().st_mtime
    )


def test_gnu_long_names_and_dot_prefixes(tmp_path: Path) -> None:
    long = "./" + "/".join(["d" * 100] * 3) + "/f"
    dest, stats = _extract(tmp_path, _tar([_file(long, b"deep")], fmt=tarfile.GNU_FORMAT))
    assert (dest / long).read_bytes() == b"deep"
    assert stats.files == 1


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/abs/escape", "a/../b"])
def test_paths_leaving_the_tree_are_refused(tmp_path: Path, name: str) -> None:
    _refused(tmp_path, _tar([_file(name)]))
    assert not (tmp_path / "escape").exists()
    assert not Path("/abs/escape").exists()


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("l", "../outside"),
        ("l", "/etc/passwd"),
        ("a/l", "../../outside"),
        ("a/l", "x/../../outside"),  # climbs again after descending: a chain could escape
        ("l", ""),
    ],
)
def test_symlinks_leaving_the_tree_are_refused(tmp_path: Path, name: str, target: str) -> None:
    _refused(tmp_path, _tar([_entry(name, tarfile.SYMTYPE, target)]))


def test_symlinks_inside_the_tree_are_kept(tmp_path: Path) -> None:
    dest, _ = _extract(
        tmp_path,
        _tar([_entry("a/b/l", tarfile.SYMTYPE, "../../c/d"), _entry("m", tarfile.SYMTYPE, "a")]),
    )
    assert (dest / "a" / "b" / "l").readlink() == Path("../../c/d")


def test_nothing_is_written_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # Even a link inside the tree is never a path to write through.
    data = _tar([_file("sub/keep"), _entry("d", tarfile.SYMTYPE, "sub"), _file("d/planted")])
    _refused(tmp_path, data)
    assert not (tmp_path / "dest" / "sub" / "planted").exists()


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_devices_and_fifos_are_refused(tmp_path: Path, kind: bytes) -> None:
    error = _refused(tmp_path, _tar([_entry("dev", kind)]))
    assert "not allowed" in error.message
    assert not (tmp_path / "dest" / "dev").exists()


@pytest.mark.parametrize(
    "members",
    [
        [_entry("h", tarfile.LNKTYPE, "missing")],
        [_entry("l", tarfile.SYMTYPE, "x"), _entry("h", tarfile.LNKTYPE, "l")],
        [_entry("h", tarfile.LNKTYPE, "../etc/passwd")],
    ],
    ids=["missing", "to-a-symlink", "outside"],
)
def test_hard_links_must_name_an_earlier_file(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    _refused(tmp_path, _tar(members))
    assert not (tmp_path / "dest" / "h").exists()


def test_a_name_given_twice_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, _tar([_file("f", b"one"), _file("f", b"two")]))
    assert (tmp_path / "dest" / "f").read_bytes() == b"one"


def test_member_count_is_bounded(tmp_path: Path) -> None:
    limits = UploadLimits(1 << 20, 1 << 20, members=10)
    error = _refused(tmp_path, _tar([_file(f"f{i}") for i in range(11)]), limits)
    assert "more than 10 members" in error.message


def test_name_length_and_depth_are_bounded(tmp_path: Path) -> None:
    limits = UploadLimits(1 << 20, 1 << 20, path_bytes=200, depth=5)
    _refused(tmp_path, _tar([_file("a" * 201)]), limits)
    (tmp_path / "b").mkdir()
    _refused(tmp_path / "b", _tar([_file("a/" * 6 + "f")]), limits)


def test_header_bytes_are_bounded(tmp_path: Path) -> None:
    limits = UploadLimits(1 << 20, 1 << 20, header_bytes=8 * 1024)
    members = [_file(f"dir/{'n' * 200}-{i}", b"") for i in range(10)]  # a PAX header each
    error = _refused(tmp_path, _tar(members), limits)
    assert "headers take more than" in error.message


def test_apparent_size_is_capped_before_writing(tmp_path: Path) -> None:
    limits = UploadLimits(apparent_bytes=1000, allocated_bytes=1 << 30)
    with pytest.raises(WorkspaceTooLarge) as caught:
        _extract(tmp_path, _tar([_file("a", b"x" * 600), _file("b", b"x" * 600)]), limits)
    assert caught.value.details["limit"] == "workspace_apparent_bytes"
    assert not (tmp_path / "dest" / "b").exists()


def test_allocated_size_is_capped(tmp_path: Path) -> None:
    limits = UploadLimits(apparent_bytes=1 << 30, allocated_bytes=4096)
    with pytest.raises(WorkspaceTooLarge) as caught:
        _extract(tmp_path, _tar([_file(f"f{i}", b"y" * 3000) for i in range(4)]), limits)
    assert caught.value.details["limit"] == "workspace_bytes"


def test_a_huge_extended_header_is_refused_unread(tmp_path: Path) -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 1 << 40  # never read: the stream below holds only the header
    header = info.tobuf(tarfile.GNU_FORMAT)
    error = _refused(tmp_path, header)
    assert "extended header is too large" in error.message


@pytest.mark.parametrize(
    "mangle",
    [
        lambda data: data[:700],  # ends mid-member
        lambda data: data[:512],  # no end-of-archive marker
        lambda data: data + b"trailing junk",
        lambda data: data[:148] + b"0000000\0" + data[156:],  # checksum
    ],
    ids=["truncated", "unterminated", "trailing", "checksum"],
)
def test_malformed_streams_are_refused(tmp_path: Path, mangle: Callable[[bytes], bytes]) -> None:
    _refused(tmp_path, mangle(_tar([_file("f", b"z" * 1000)])))


def test_unknown_pax_records_are_refused(tmp_path: Path) -> None:
    info, data = _file("f")
    info.pax_headers = {"GNU.sparse.map": "0,1"}
    _refused(tmp_path, _tar([(info, data)]))
