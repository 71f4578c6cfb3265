"""Archive a workspace directory into a tar file for the guest agent.

Contract: regular files, directories and symlinks are archived (symlinks as
symlinks, never followed, so nothing outside the tree is read); hard links
inside the tree stay hard links; sockets, FIFOs and device nodes are skipped
and reported. The archive is written to a file so that its preparation can
overlap the guest's boot and be timed on its own.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from cleanroom.errors import InvalidRequest

__all__ = ["ArchiveStats", "archive_workspace", "iter_file_chunks", "scan_workspace"]

CHUNK = 256 * 1024


@dataclass(frozen=True)
class ArchiveStats:
    """What went into the archive."""

    files: int
    directories: int
    symlinks: int
    bytes: int
    """Sum of regular file sizes."""
    archive_bytes: int
    """Size of the tar file (0 for a scan)."""
    skipped: tuple[str, ...]
    """Relative paths of special files that were left out."""


def scan_workspace(source: Path) -> ArchiveStats:
    """Count what :func:`archive_workspace` would archive, without writing anything.

    Raises ``InvalidRequest`` when ``source`` is not a readable directory.
    """
    return _walk_tree(source, None)


def archive_workspace(source: Path, dest: Path) -> ArchiveStats:
    """Write ``source``'s tree to the uncompressed tar ``dest`` (paths relative to ``source``).

    Raises ``InvalidRequest`` when ``source`` is not a readable directory.
    """
    try:
        with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
            stats = _walk_tree(source, tar)
        return replace(stats, archive_bytes=dest.stat().st_size)
    except OSError as exc:
        raise _unreadable(source, exc) from exc


def _walk_tree(source: Path, tar: tarfile.TarFile | None) -> ArchiveStats:
    if not source.is_dir():
        raise InvalidRequest(f"workspace {source} is not a directory", details={"cwd": str(source)})
    counts = {"files": 0, "dirs": 0, "links": 0, "bytes": 0}
    skipped: list[str] = []

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                counts["dirs"] += 1
                if tar is not None:
                    tar.add(entry.path, arcname=rel, recursive=False)
                walk(entry.path, rel + "/")
                continue
            if stat.S_ISREG(st.st_mode):
                counts["files"] += 1
                counts["bytes"] += st.st_size
            elif stat.S_ISLNK(st.st_mode):
                counts["links"] += 1  # archived as a link, never followed
            else:
                skipped.append(rel)
                continue
            if tar is not None:
                tar.add(entry.path, arcname=rel, recursive=False)

    try:
        walk(str(source), "")
    except OSError as exc:
        raise _unreadable(source, exc) from exc
    return ArchiveStats(
        files=counts["files"],
        directories=counts["dirs"],
        symlinks=counts["links"],
        bytes=counts["bytes"],
        archive_bytes=0,
        skipped=tuple(skipped),
    )


def _unreadable(source: Path, exc: OSError) -> InvalidRequest:
    return InvalidRequest(
        f"cannot archive workspace {source}: {exc.strerror or exc}",
        details={"cwd": str(source), "path": exc.filename},
    )


def iter_file_chunks(path: Path, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield ``path``'s bytes in chunks of at most ``chunk`` bytes (bounded memory)."""
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            yield block
