"""Ready a workspace directory for a guest: its archive in memory or a file
(private copies for host-made workspace disks: :mod:`cleanroom.service.staging`).

What goes into a workspace archive (and how the tree is walked safely) is
:mod:`cleanroom.workspace_tree`; its names are re-exported here.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cleanroom.changes import HostManifest, manifest_from_archive
from cleanroom.workspace_tree import (
    CHUNK,
    ArchiveStats,
    archive_workspace,
    check_workspace_size,
    scan_workspace,
)

__all__ = [
    "MEMORY_ARCHIVE_LIMIT",
    "ArchiveStats",
    "PreparedArchive",
    "archive_workspace",
    "check_workspace_size",
    "iter_file_chunks",
    "prepare_archive",
    "scan_workspace",
]

MEMORY_ARCHIVE_LIMIT = 8 << 20
"""Workspaces up to this many bytes are archived in memory, larger ones in a file."""


def iter_file_chunks(path: Path, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield ``path``'s bytes in chunks of at most ``chunk`` bytes (bounded memory)."""
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            yield block


@dataclass(frozen=True)
class PreparedArchive:
    """A workspace archive ready to stream: its chunks, what is in it, how long it took."""

    chunks: Iterable[bytes] | AsyncIterator[bytes]
    stats: ArchiveStats
    archive_ms: float
    path: Path | None
    """The archive file to remove after the transfer (None: held in memory)."""
    manifest: HostManifest | None = None
    """For an archive held in memory, when asked for: the manifest read from it."""


async def prepare_archive(
    source: Path, size: int, run_dir: Path, *, manifest: bool = False
) -> PreparedArchive:
    """Archive ``source`` (``size``: its scanned bytes) off the event loop: in
    memory up to :data:`MEMORY_ARCHIVE_LIMIT`, else into ``run_dir/workspace.tar``
    (read back in chunks). Raises ``InvalidRequest`` like :func:`archive_workspace`.

    With ``manifest``, an archive held in memory comes with its manifest, read
    by the same thread right after it is made (one thread hop, not two, on a
    small run's path); a file's is the caller's to read while it streams.
    """
    started = time.monotonic()
    if size <= MEMORY_ARCHIVE_LIMIT:

        def archive() -> tuple[bytes, ArchiveStats, HostManifest | None]:
            buf = io.BytesIO()
            stats = archive_workspace(source, buf)
            data = buf.getvalue()
            return data, stats, manifest_from_archive(io.BytesIO(data)) if manifest else None

        data, stats, read = await asyncio.to_thread(archive)
        return PreparedArchive([data], stats, _ms_since(started), None, read)
    path = run_dir / "workspace.tar"
    stats = await asyncio.to_thread(archive_workspace, source, path)
    return PreparedArchive(_async_chunks(path), stats, _ms_since(started), path)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000


async def _async_chunks(path: Path) -> AsyncIterator[bytes]:
    it = iter_file_chunks(path)
    while True:
        block = await asyncio.to_thread(next, it, b"")
        if not block:
            return
        yield block
