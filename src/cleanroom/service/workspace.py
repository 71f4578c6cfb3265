"""Ready a workspace directory for a guest: its archive in memory or a file, and
private copies (stagings) for host-made workspace disks.

What goes into a workspace archive (and how the tree is walked safely) is
:mod:`cleanroom.workspace_tree`; its names are re-exported here.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cleanroom.errors import ConfigInvalid, RuntimeLaunchFailed
from cleanroom.workspace_tree import (
    CHUNK,
    ArchiveStats,
    archive_workspace,
    check_workspace_size,
    scan_workspace,
)

__all__ = [
    "MEMORY_ARCHIVE_LIMIT",
    "STAGE_IN_MEMORY_LIMIT",
    "STAGING_DIR_ENV",
    "ArchiveStats",
    "PreparedArchive",
    "archive_workspace",
    "check_workspace_size",
    "iter_file_chunks",
    "prepare_archive",
    "remove_dead_stagings",
    "scan_workspace",
    "stage_workspace",
    "staging_dir",
    "staging_root",
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


async def prepare_archive(source: Path, size: int, run_dir: Path) -> PreparedArchive:
    """Archive ``source`` (``size``: its scanned bytes) off the event loop: in
    memory up to :data:`MEMORY_ARCHIVE_LIMIT`, else into ``run_dir/workspace.tar``
    (read back in chunks). Raises ``InvalidRequest`` like :func:`archive_workspace`."""
    started = time.monotonic()
    if size <= MEMORY_ARCHIVE_LIMIT:
        buf = io.BytesIO()
        stats = await asyncio.to_thread(archive_workspace, source, buf)
        return PreparedArchive([buf.getvalue()], stats, _ms_since(started), None)
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


STAGE_IN_MEMORY_LIMIT = 256 << 20
"""Workspaces up to this many bytes are staged in memory (``/dev/shm``): on a
busy disk, writing the copy there costs several times the disk image itself."""

_SHM = Path("/dev/shm")  # noqa: S108 -- tmpfs on every Linux; our dirs in it are 0700
_STAGE_PREFIX = "cleanroom-stage-"
STAGING_DIR_ENV = "CLEANROOM_STAGING_DIR"
"""Names another (absolute) directory for in-memory stagings, e.g. a test run's own."""


def staging_dir() -> Path:
    """Where in-memory stagings go: ``$CLEANROOM_STAGING_DIR`` if set, else ``/dev/shm``.
    Raises ``ConfigInvalid`` for a relative path."""
    value = os.environ.get(STAGING_DIR_ENV)
    if not value:
        return _SHM
    path = Path(value)
    if not path.is_absolute():
        raise ConfigInvalid(
            f"{STAGING_DIR_ENV} must be an absolute path", details={"value": value[:300]}
        )
    return path


def staging_root(size: int, run_dir: Path) -> Path:
    """Where to stage a workspace of ``size`` bytes: a fresh private directory in
    :func:`staging_dir` (named after this process, see :func:`remove_dead_stagings`)
    up to :data:`STAGE_IN_MEMORY_LIMIT`, else ``run_dir``."""
    shm = staging_dir()
    if size <= STAGE_IN_MEMORY_LIMIT and shm.is_dir():
        return Path(tempfile.mkdtemp(prefix=f"{_STAGE_PREFIX}{os.getpid()}-", dir=shm))
    return run_dir


def remove_dead_stagings() -> list[str]:
    """Remove staging directories left in :func:`staging_dir` by processes that are gone."""
    removed = []
    shm = staging_dir()
    for path in shm.glob(f"{_STAGE_PREFIX}*") if shm.is_dir() else ():
        pid = path.name.removeprefix(_STAGE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def stage_workspace(source: Path, run_dir: Path) -> tuple[Path, ArchiveStats]:
    """A private copy of ``source`` in ``run_dir/workspace-seed`` (mode 0700) for
    a host-made workspace disk, and what went into it (``run_dir``: see
    :func:`staging_root`).

    The disk builder (``mkfs.ext4 -d``) reads its tree by path, which a process
    swapping symlinks in the repository could redirect; it gets this copy,
    extracted from the descriptor-walked archive, instead. Special files are
    left out as in any archive. Raises ``InvalidRequest`` (see
    :func:`archive_workspace`) or ``RuntimeLaunchFailed`` when the copy cannot
    be written.
    """
    staging = run_dir / "workspace-seed"
    archive = run_dir / "workspace-seed.tar"
    try:
        staging.mkdir(mode=0o700)
        stats = archive_workspace(source, archive)
        # GNU tar, as root, restores modes, owners and times as the archive says.
        subprocess.run(
            ["tar", "-x", "-f", str(archive), "-C", str(staging)],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        why = exc.stderr.decode(errors="replace").strip()[-500:]
        raise RuntimeLaunchFailed(
            f"could not stage the workspace for its disk: {why}", details={"cwd": str(source)}
        ) from exc
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeLaunchFailed(
            f"could not stage the workspace for its disk: {exc.strerror or exc}",
            details={"cwd": str(source)},
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        archive.unlink(missing_ok=True)
    return staging, stats
