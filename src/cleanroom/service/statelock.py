"""One server per state directory.

The state directory holds the run directories, the warm pools' files and the crash-repair
view of "runs that were running". A server repairs (marks ``interrupted``) every run it
finds running at start-up and removes the pool directory wholesale, so a second server on
the same state directory, listening on another address, would destroy the first one's live
runs. The socket lock cannot prevent that (it is per address), so the service takes an
exclusive lock on the state directory itself for its whole life.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cleanroom.errors import ServerUnavailable

LOCK_NAME = "server.lock"


class StateLock:
    """An exclusive, non-blocking ``flock`` on ``<state dir>/server.lock``.

    The lock file is opened with ``O_NOFOLLOW`` (never through a symlink) and mode 0600.
    The kernel drops the lock when the process dies, so a crashed server never blocks the
    next one.
    """

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock. Raises ``ServerUnavailable`` (reason ``state_dir_in_use``) when
        another live server holds it. Idempotent."""
        if self._fd is not None:
            return
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ServerUnavailable(
                f"cannot lock the state directory {self._path.parent}: {exc.strerror or exc}",
                details={"reason": "state_dir_unusable"},
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ServerUnavailable(
                f"another cleanroom server uses the state directory {self._path.parent}",
                details={"reason": "state_dir_in_use"},
            ) from exc
        self._fd = fd

    def release(self) -> None:
        """Drop the lock. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
