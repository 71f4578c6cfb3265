"""Walk a workspace directory into a tar stream: the one set of rules for what a
workspace holds, used by the server (copying a local directory into a guest)
and by clients (uploading a directory to a remote server).

Contract: regular files, directories and symlinks are archived (symlinks as
symlinks, never followed, so nothing outside the tree is read); hard links
inside the tree stay hard links; sockets, FIFOs and device nodes are skipped
and reported.

The tree is walked with directory file descriptors: every directory and file
is opened relative to its already-open parent with ``O_NOFOLLOW``, and what
is archived is what the open descriptor says (``fstat``), not an earlier
look at the path. A process that swaps a directory or file for a symlink
while the walk runs makes the archive fail (``InvalidRequest``); it can never
get a file from outside the tree copied in.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cleanroom.config_limits import LimitsConfig
from cleanroom.errors import InvalidRequest, WorkspaceTooLarge

__all__ = [
    "CHUNK",
    "ArchiveStats",
    "archive_workspace",
    "check_workspace_size",
    "scan_workspace",
]

CHUNK = 256 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file must not block the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class ArchiveStats:
    """What went into the archive."""

    files: int
    directories: int
    symlinks: int
    bytes: int
    """Sum of regular file sizes."""
    archive_bytes: int
    """Size of the tar stream (0 for a scan)."""
    skipped: tuple[str, ...]
    """Relative paths of special files that were left out."""
    allocated: int = 0
    """Sum of regular files' allocated bytes (``st_blocks``; a sparse file's holes
    take none; a hard-linked file counts once)."""


def check_workspace_size(stats: ArchiveStats, limits: LimitsConfig) -> None:
    """Raise ``WorkspaceTooLarge`` if the scanned workspace passes either cap:
    ``limits.workspace_bytes`` (allocated on disk) or
    ``limits.workspace_apparent_bytes`` (apparent sizes, holes included)."""
    for measured, limit, key in (
        (stats.allocated, limits.workspace_bytes, "workspace_bytes"),
        (stats.bytes, limits.workspace_apparent_bytes, "workspace_apparent_bytes"),
    ):
        if measured > limit:
            raise WorkspaceTooLarge(
                f"the workspace holds {measured} bytes, more than limits.{key} ({limit})",
                details={"limit": key, "bytes": measured, "max_bytes": limit},
            )


def scan_workspace(source: Path) -> ArchiveStats:
    """Count what :func:`archive_workspace` would archive, without writing anything.

    Raises ``InvalidRequest`` when ``source`` is not a readable directory.
    """
    return _Walk(source, None).run(0)


def archive_workspace(source: Path, dest: Path | BinaryIO) -> ArchiveStats:
    """Write ``source``'s tree as an uncompressed tar (paths relative to ``source``)
    to the file ``dest`` or into the binary stream ``dest``.

    Raises ``InvalidRequest`` when ``source`` is not a readable directory, or
    changes under the walk in a way that could escape it.
    """
    try:
        if isinstance(dest, Path):
            with dest.open("wb") as fh:
                return _archive_into(source, fh)
        return _archive_into(source, dest)
    except OSError as exc:
        raise _unreadable(source, exc) from exc


def _archive_into(source: Path, fh: BinaryIO) -> ArchiveStats:
    start = fh.tell()
    with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
        stats = _Walk(source, tar).run(0)
    return _with_size(stats, fh.tell() - start)


def _with_size(stats: ArchiveStats, size: int) -> ArchiveStats:
    return ArchiveStats(
        stats.files,
        stats.directories,
        stats.symlinks,
        stats.bytes,
        size,
        stats.skipped,
        stats.allocated,
    )


def _openat(name: str, flags: int, dir_fd: int) -> int:
    """``openat(2)``; one place, so tests can interpose on the walk."""
    return os.open(name, flags, dir_fd=dir_fd)


def _info(name: str, st: os.stat_result, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    info.size = st.st_size if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    return info


class _Walk:
    """One walk of ``source`` (counting, and archiving into ``tar`` if given)."""

    def __init__(self, source: Path, tar: tarfile.TarFile | None) -> None:
        self._source = source
        self._tar = tar
        self._files = self._dirs = self._links = self._bytes = self._allocated = 0
        self._counted: set[tuple[int, int]] = set()
        """(device, inode) of multiply-linked files already counted as allocated."""
        self._skipped: list[str] = []
        self._seen: dict[tuple[int, int], str] = {}
        """(device, inode) -> first name it was put under, for hard links."""

    def run(self, archive_bytes: int) -> ArchiveStats:
        source = self._source
        if not source.is_dir():
            raise InvalidRequest(
                f"workspace {source} is not a directory", details={"cwd": str(source)}
            )
        try:
            # The workspace root itself may be reached through a symlink (the caller's cwd).
            root = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._walk(root, "")
            finally:
                os.close(root)
        except OSError as exc:
            raise _unreadable(source, exc) from exc
        return ArchiveStats(
            files=self._files,
            directories=self._dirs,
            symlinks=self._links,
            bytes=self._bytes,
            archive_bytes=archive_bytes,
            skipped=tuple(self._skipped),
            allocated=self._allocated,
        )

    def _walk(self, dir_fd: int, prefix: str) -> None:
        with os.scandir(dir_fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                self._dirs += 1
                fd = _openat(entry.name, _DIR_FLAGS, dir_fd)
                try:
                    if self._tar is not None:
                        self._tar.addfile(_info(rel, os.fstat(fd), tarfile.DIRTYPE))
                    self._walk(fd, rel + "/")
                finally:
                    os.close(fd)
            elif stat.S_ISREG(st.st_mode):
                self._files += 1
                self._bytes += st.st_size
                key = (st.st_dev, st.st_ino)
                if st.st_nlink == 1 or key not in self._counted:
                    self._allocated += st.st_blocks * 512
                    if st.st_nlink > 1:
                        self._counted.add(key)
                if self._tar is not None:
                    self._add_file(self._tar, dir_fd, entry.name, rel)
            elif stat.S_ISLNK(st.st_mode):
                self._links += 1  # kept as a link, never followed
                if self._tar is not None:
                    target = os.readlink(entry.name, dir_fd=dir_fd)
                    self._tar.addfile(_info(rel, st, tarfile.SYMTYPE, target))
            else:
                self._skipped.append(rel)

    def _add_file(self, tar: tarfile.TarFile, dir_fd: int, name: str, rel: str) -> None:
        with os.fdopen(_openat(name, _FILE_FLAGS, dir_fd), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{rel} stopped being a regular file during the walk")
            key = (st.st_dev, st.st_ino)
            first = self._seen.get(key) if st.st_nlink > 1 else None
            if first is not None:
                tar.addfile(_info(rel, st, tarfile.LNKTYPE, first))
                return
            self._seen[key] = rel
            tar.addfile(_info(rel, st, tarfile.REGTYPE), fh)


def _unreadable(source: Path, exc: OSError) -> InvalidRequest:
    return InvalidRequest(
        f"cannot archive workspace {source}: {exc.strerror or exc}",
        details={"cwd": str(source), "path": exc.filename},
    )
