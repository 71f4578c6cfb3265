"""Stage a private copy of a workspace for a host-made workspace disk, holes kept.

The disk builder (``mkfs.ext4 -d``) reads its tree by path, which a process
swapping symlinks in the repository could redirect; it gets this copy, made
by the descriptor walk of :mod:`cleanroom.workspace_tree`, instead.

Sparse files stay sparse: only the data extents the source reports
(``SEEK_DATA``/``SEEK_HOLE``) are read, and blocks that read as zeros are not
written, so a 10 GiB file holding 1 MiB of data takes about 1 MiB here (and
``mke2fs`` keeps the holes on the disk it builds). The bytes written are
capped, because a file may grow or fill in between the size check and the copy.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

from cleanroom.errors import RuntimeLaunchFailed, WorkspaceTooLarge
from cleanroom.paths import env_dir
from cleanroom.workspace_tree import ArchiveStats, walk_workspace

__all__ = [
    "STAGE_IN_MEMORY_LIMIT",
    "STAGING_DIR_ENV",
    "copy_sparse",
    "remove_dead_stagings",
    "stage_workspace",
    "staging_dir",
    "staging_root",
]

STAGE_IN_MEMORY_LIMIT = 256 << 20
"""Workspaces up to this many bytes are staged in memory (``/dev/shm``): on a
busy disk, writing the copy there costs several times the disk image itself."""

_SHM = Path("/dev/shm")  # noqa: S108 -- tmpfs on every Linux; our dirs in it are 0700
_STAGE_PREFIX = "cleanroom-stage-"
STAGING_DIR_ENV = "CLEANROOM_STAGING_DIR"
"""Names another (absolute) directory for in-memory stagings, e.g. a test run's own."""

_CHUNK = 1 << 20
_BLOCK = 64 * 1024  # the granularity at which zeros are left as holes
_ZEROS = bytes(_BLOCK)
_M = TypeVar("_M", bound="Callable[..., None]")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def staging_dir() -> Path:
    """Where in-memory stagings go: ``$CLEANROOM_STAGING_DIR`` if set, else ``/dev/shm``.
    Raises ``ConfigInvalid`` for a relative path."""
    return env_dir(STAGING_DIR_ENV, _SHM)


def staging_root(size: int, run_dir: Path) -> Path:
    """Where to stage a workspace of ``size`` bytes (allocated: holes take nothing): a
    fresh private directory in :func:`staging_dir` (named after this process, see
    :func:`remove_dead_stagings`) up to :data:`STAGE_IN_MEMORY_LIMIT`, else ``run_dir``."""
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


class _Budget:
    """Bytes of file data still allowed into the copy."""

    def __init__(self, max_bytes: int | None) -> None:
        self.left = max_bytes

    def take(self, n: int) -> None:
        if self.left is None:
            return
        self.left -= n
        if self.left < 0:
            raise _OverBudget


class _OverBudget(Exception):
    pass


class _WriteFailed(Exception):
    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.error = exc


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each data extent of ``fd`` below ``size``; the whole file
    when the filesystem cannot tell holes apart."""
    extents = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(0, size)]
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end))
        pos = end
    return extents


def copy_sparse(
    src: int, dst: int, size: int, before_write: Callable[[int], None] | None = None
) -> int:
    """Copy the first ``size`` bytes of ``src`` to ``dst`` (both descriptors, ``dst``
    empty) keeping holes: holes are skipped, zero blocks are not written, and
    ``dst`` is truncated to ``size``. ``before_write(n)`` is called before each
    write of ``n`` bytes (and may raise to stop). Returns the bytes written."""
    written = 0
    for start, end in _data_extents(src, size):
        pos = start
        while pos < end:
            data = os.pread(src, min(_CHUNK, end - pos), pos)
            if not data:
                break  # the file shrank: the rest reads as a hole
            view = memoryview(data)
            for off in range(0, len(data), _BLOCK):
                block = view[off : off + _BLOCK]
                if block != _ZEROS[: len(block)]:
                    if before_write is not None:
                        before_write(len(block))
                    os.pwrite(dst, block, pos + off)
                    written += len(block)
            pos += len(data)
    os.ftruncate(dst, size)
    return written


def _writes(method: _M) -> _M:
    """Report the wrapped sink method's ``OSError`` as :class:`_WriteFailed`: the walk
    turns ``OSError`` into "workspace unreadable", and these are the copy's own."""

    @functools.wraps(method)
    def wrapped(*args: Any) -> None:
        try:
            method(*args)
        except OSError as exc:
            raise _WriteFailed(exc) from exc

    return cast("_M", wrapped)


class _CopySink:
    """Recreates each walked entry under the private directory ``root_fd``."""

    def __init__(self, root_fd: int, budget: _Budget) -> None:
        self._root = root_fd
        self._budget = budget
        self._owner = os.geteuid() == 0  # as root, keep owners (like tar -x)
        self._dirs: list[tuple[str, os.stat_result]] = []

    @_writes
    def directory(self, rel: str, st: os.stat_result) -> None:
        os.mkdir(rel, 0o700, dir_fd=self._root)
        self._dirs.append((rel, st))  # its mode and times once its content is in

    @_writes
    def regular(self, rel: str, fh: BinaryIO, st: os.stat_result) -> None:
        fd = os.open(rel, _NEW_FILE, 0o600, dir_fd=self._root)
        try:
            copy_sparse(fh.fileno(), fd, st.st_size, self._budget.take)
            if self._owner:
                os.fchown(fd, st.st_uid, st.st_gid)  # before the mode: chown clears setuid
            os.fchmod(fd, st.st_mode & 0o7777)
            os.utime(fd, ns=_times(st))
        finally:
            os.close(fd)

    @_writes
    def hardlink(self, rel: str, st: os.stat_result, first: str) -> None:
        del st
        os.link(first, rel, src_dir_fd=self._root, dst_dir_fd=self._root, follow_symlinks=False)

    @_writes
    def symlink(self, rel: str, st: os.stat_result, target: str) -> None:
        os.symlink(target, rel, dir_fd=self._root)
        if self._owner:
            os.chown(rel, st.st_uid, st.st_gid, dir_fd=self._root, follow_symlinks=False)
        os.utime(rel, ns=_times(st), dir_fd=self._root, follow_symlinks=False)

    def finish(self) -> None:
        """Give directories their modes, owners and times, deepest first."""
        for rel, st in reversed(self._dirs):
            if self._owner:
                os.chown(rel, st.st_uid, st.st_gid, dir_fd=self._root, follow_symlinks=False)
            os.chmod(rel, st.st_mode & 0o7777, dir_fd=self._root, follow_symlinks=False)
            os.utime(rel, ns=_times(st), dir_fd=self._root, follow_symlinks=False)


def _times(st: os.stat_result) -> tuple[int, int]:
    # Whole seconds, as the tar-based copy kept them.
    mtime = int(st.st_mtime) * 1_000_000_000
    return mtime, mtime


def stage_workspace(
    source: Path, run_dir: Path, max_bytes: int | None = None
) -> tuple[Path, ArchiveStats]:
    """A private copy of ``source`` in ``run_dir/workspace-seed`` (mode 0700) for a
    host-made workspace disk, and what went into it (``run_dir``: see
    :func:`staging_root`). Modes, owners (as root), mtimes, hard links and
    symlinks are kept, special files left out, holes kept (see the module doc).

    Raises ``InvalidRequest`` (see ``archive_workspace``), ``WorkspaceTooLarge``
    when more than ``max_bytes`` of file data would be written, or
    ``RuntimeLaunchFailed`` when the copy cannot be written. Nothing is left
    behind on failure.
    """
    staging = run_dir / "workspace-seed"
    budget = _Budget(max_bytes)
    try:
        staging.mkdir(mode=0o700)
        root = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            sink = _CopySink(root, budget)
            stats = walk_workspace(source, sink)
            sink.finish()
        finally:
            os.close(root)
    except _OverBudget:
        shutil.rmtree(staging, ignore_errors=True)
        raise WorkspaceTooLarge(
            f"the workspace grew past limits.workspace_bytes ({max_bytes}) while it was copied",
            details={"limit": "workspace_bytes", "max_bytes": max_bytes},
        ) from None
    except (OSError, _WriteFailed) as caught:
        shutil.rmtree(staging, ignore_errors=True)
        exc = caught.error if isinstance(caught, _WriteFailed) else caught
        raise RuntimeLaunchFailed(
            f"could not stage the workspace for its disk: {exc.strerror or exc}",
            details={"cwd": str(source)},
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging, stats
