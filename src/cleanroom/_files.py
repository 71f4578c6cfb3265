"""Private files written whole (the one atomic, owner-only file writer), and
descriptors closed when what follows their opening fails."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["closed_on_error", "write_private"]


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; the file is 0600 from its creation.

    The data is written to a fresh temporary file beside ``path`` (so a reader
    sees the old content or the new, never a mix, and no other user ever sees
    a readable copy), synced, renamed over ``path``, and the directory synced so
    the rename survives a crash. Raises ``OSError``; the temporary file is gone
    on every failure.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # 0600
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def closed_on_error(fd: int) -> Iterator[int]:
    """Close ``fd`` when the block raises (anything, cancellation too), then let
    the error through; on success ``fd`` stays open, the caller's to keep."""
    try:
        yield fd
    except BaseException:
        os.close(fd)
        raise
