"""Crash repair and retention of run directories.

A run holds an exclusive ``flock`` on ``run.lock`` in its directory from its
first step until its cleanup is done (:func:`hold_run`), so whether a run's
owner is alive is a question the kernel answers: a lock nobody holds means the
process that ran it is gone, whatever its PID became. A server that crashed
(or was SIGKILLed) leaves directories with no record, or with ``cleanup:
pending``; :func:`repair_runs` removes their disks and marks their records
``interrupted`` (or, for a run that had already answered, just ``cleanup:
done``). :func:`prune_runs` deletes finished run directories by age, count and
bytes, oldest first; it never touches a run whose owner is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cleanroom.backends.rootfs import remove_rootfs
from cleanroom.backends.workspace_disk import remove_scratch_disk, remove_workspace_disk
from cleanroom.config_limits import LimitsConfig
from cleanroom.errors import CleanroomError
from cleanroom.service.ids import utc_now
from cleanroom.service.record import RECORD_NAME, RunRecorder, error_dict

__all__ = [
    "LOCK_NAME",
    "AutoPrune",
    "Retention",
    "RunHold",
    "hold_run",
    "prune_runs",
    "repair_runs",
    "retention",
    "run_dirs",
]

LOCK_NAME = "run.lock"
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
_STAGINGS = ("workspace-seed", "workspace-seed.tar")


class RunHold:
    """The live owner's lock on one run directory; :meth:`release` ends it."""

    def __init__(self, run_dir: Path) -> None:
        self._path = run_dir / LOCK_NAME
        self._fd: int | None = os.open(self._path, _LOCK_FLAGS, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    async def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._path.unlink(missing_ok=True)
            os.close(fd)


def hold_run(run_dir: Path) -> RunHold:
    """Take ``run_dir``'s owner lock (``OSError`` if another process holds it)."""
    return RunHold(run_dir)


def run_dirs(root: Path) -> Iterator[Path]:
    """The run directories directly under ``root`` (``run-*``, real directories)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("run-") and entry.is_dir() and not entry.is_symlink():
                yield entry


@contextlib.contextmanager
def _unowned(run_dir: Path) -> Iterator[bool]:
    """Yields whether no live process owns ``run_dir`` (holding the lock meanwhile)."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        yield True  # never locked, or its owner finished
        return
    except OSError:
        yield False  # a symlink or worse: not ours to judge
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
    finally:
        os.close(fd)


def _read(run_dir: Path) -> dict[str, object] | None:
    try:
        value = json.loads((run_dir / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write(run_dir: Path, record: dict[str, object]) -> None:
    path = run_dir / RECORD_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _remove_disks(run_dir: Path) -> None:
    remove_rootfs(run_dir)
    remove_workspace_disk(run_dir)
    remove_scratch_disk(run_dir)
    for name in _STAGINGS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _interrupted(run_dir: Path) -> dict[str, object]:
    """A complete record for a run whose server died before writing one."""
    blank = RunRecorder(
        run_id=run_dir.name,
        cleanroom_id="",
        backend="",
        policy_hash="",
        command=[],
        run_dir=run_dir,
    )
    record: dict[str, object] = dict(blank.snapshot())
    stat = run_dir.stat()
    record["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stat.st_mtime))
    return record


def repair_runs(root: Path) -> list[str]:
    """Repair the run directories under ``root`` left by a dead owner; their ids.

    A directory whose record is missing (its lock file present) or says
    ``cleanup: pending``, and whose owner lock nobody holds, has its disks
    removed; its record then says
    ``cleanup: done`` and, if the run never answered (``running`` or no
    record), ``status: interrupted`` with an ``internal_error``.
    """
    repaired = []
    for run_dir in run_dirs(root):
        record = _read(run_dir)
        if record is not None and record.get("cleanup") != "pending":
            continue  # finished and released
        if record is None and not os.path.lexists(run_dir / LOCK_NAME):
            # No owner lock was ever taken (a server without run locks made it,
            # or it is microseconds old): whether its owner lives is unknowable.
            continue
        with _unowned(run_dir) as unowned:
            if not unowned:
                continue  # its owner is alive
            _remove_disks(run_dir)
            if record is None:
                record = _interrupted(run_dir)
            if record.get("status") in (None, "running"):
                record["status"] = "interrupted"
                record["error"] = error_dict(
                    CleanroomError("the server stopped before the run ended")
                )
                record["ended_at"] = utc_now()
            record["cleanup"] = "done"
            _write(run_dir, record)
        repaired.append(run_dir.name)
    return repaired


@dataclass(frozen=True)
class Retention:
    """How many finished runs to keep: ``None`` means no limit of that kind."""

    max_age_seconds: float | None = None
    max_count: int | None = None
    max_bytes: int | None = None


def retention(limits: LimitsConfig) -> Retention:
    """The runtime config's retention limits (``limits.runs_max_*``)."""
    return Retention(
        max_age_seconds=limits.runs_max_age_days * 86400,
        max_count=limits.runs_max_count,
        max_bytes=limits.runs_max_bytes,
    )


def _allocated(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512  # noqa: PTH118
    return total


def prune_runs(root: Path, keep: Retention, *, now: float | None = None) -> list[str]:
    """Delete finished run directories under ``root`` beyond ``keep``; their ids.

    Only runs whose record says their cleanup finished (``done`` or
    ``failed``) and whose owner lock is free are candidates; the oldest (by
    the record's mtime) go first: those older than ``max_age_seconds``, then
    beyond ``max_count``, then until the rest fit ``max_bytes``.
    """
    now = time.time() if now is None else now
    finished = []
    for run_dir in run_dirs(root):
        record = _read(run_dir)
        if record is None or record.get("cleanup") not in ("done", "failed"):
            continue
        with contextlib.suppress(OSError):
            finished.append((run_dir.joinpath(RECORD_NAME).stat().st_mtime, run_dir))
    finished.sort()
    doomed: list[Path] = []
    kept: list[Path] = []
    for mtime, run_dir in finished:
        too_old = keep.max_age_seconds is not None and now - mtime > keep.max_age_seconds
        (doomed if too_old else kept).append(run_dir)
    if keep.max_count is not None and len(kept) > keep.max_count:
        excess = len(kept) - keep.max_count
        doomed += kept[:excess]
        kept = kept[excess:]
    if keep.max_bytes is not None:
        sizes = [_allocated(d) for d in kept]
        total = sum(sizes)
        while kept and total > keep.max_bytes:
            doomed.append(kept.pop(0))
            total -= sizes.pop(0)
    removed = []
    for run_dir in doomed:
        with _unowned(run_dir) as unowned:
            if unowned:
                shutil.rmtree(run_dir, ignore_errors=True)
                removed.append(run_dir.name)
    return removed


class AutoPrune:
    """Prunes ``root`` to ``keep`` (:func:`prune_runs`, on a thread) when poked, at most
    once per ``interval`` seconds, so a long-lived server's run directories stay
    within the retention limits, not only at start-up."""

    def __init__(self, root: Path, keep: Retention, interval: float = 30.0) -> None:
        self._root = root
        self._keep = keep
        self._interval = interval
        self._last = time.monotonic()  # the start-up prune just ran
        self._task: asyncio.Future[list[str]] | None = None

    def poke(self) -> None:
        """A run finished: prune now unless a prune ran within the interval or still runs."""
        now = time.monotonic()
        if now - self._last < self._interval or (self._task is not None and not self._task.done()):
            return
        self._last = now
        self._task = asyncio.ensure_future(asyncio.to_thread(prune_runs, self._root, self._keep))
        self._task.add_done_callback(_retrieve)

    async def close(self) -> None:
        """Wait for a prune in progress."""
        if self._task is not None:
            await asyncio.wait({self._task})


def _retrieve(task: asyncio.Future[list[str]]) -> None:
    # A failed background prune is retried at the next poke; never an unretrieved error.
    if not task.cancelled():
        task.exception()
