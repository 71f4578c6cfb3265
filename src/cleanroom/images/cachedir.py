"""What the image caches share about their directories: the builder lock, private
``.build-*`` staging directories, atomic publication and removal.

An exclusive ``flock`` on ``<root>/.lock`` serialises builders; whoever takes
it removes stale ``.build-*`` directories (their builders are gone, since they
no longer hold the lock). An entry appears by renaming a finished directory to
its final name, and goes by renaming it to a ``.build-*`` name before deleting
it, so nothing half-written or half-deleted ever looks like an entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from cleanroom.errors import ImageUnavailable
from cleanroom.images.progress import Progress

__all__ = ["build_lock", "discard", "load_entries", "new_staging", "publish"]

_BUILD_PREFIX = ".build-"
_ENTRY_RE = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


def load_entries(root: Path, load: Callable[[Path], T]) -> list[T]:
    """What ``load`` makes of each entry directory (named by 64 hex digits) in ``root``;
    entries it refuses with ImageUnavailable (incomplete, damaged) are left out."""
    if not root.is_dir():
        return []
    found: list[T] = []
    for entry in root.iterdir():
        if _ENTRY_RE.match(entry.name) and entry.is_dir():
            with contextlib.suppress(ImageUnavailable):
                found.append(load(entry))
    return found


@contextlib.contextmanager
def build_lock(root: Path, progress: Progress) -> Iterator[None]:
    """Hold the exclusive builder lock of the cache directory ``root`` (waits, saying so)."""
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.info("waiting for another image build to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def new_staging(root: Path) -> Path:
    """A fresh private directory in ``root``, after removing stale ones (hold the lock)."""
    for entry in root.iterdir():
        if entry.name.startswith(_BUILD_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, dir=root))


def publish(staging: Path, final: Path) -> None:
    """Move ``staging`` to ``final`` atomically, replacing any existing entry."""
    if final.exists():
        # rename() cannot replace a non-empty directory: move the old one aside first.
        old = final.with_name(f"{_BUILD_PREFIX}old-{final.name}-{os.getpid()}")
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(final)


def discard(entry: Path, why: str) -> None:
    """Delete the entry directory ``entry``, renaming it out of sight first (``why`` goes
    into the temporary name). Files already open (a running guest's) survive."""
    doomed = entry.with_name(f"{_BUILD_PREFIX}{why}-{entry.name}")
    entry.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)
