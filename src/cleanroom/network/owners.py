"""Which process owns a run namespace, so that reconciling never touches a live server's.

Namespace names are host-wide, so the owner records are too: one file per
namespace under :func:`owner_dir` (:data:`OWNER_DIR` unless
``$CLEANROOM_NETNS_OWNER_DIR`` names another absolute directory, e.g. a test
run's private one) holding the owner's PID and its start time (which tells a
reused PID apart). A namespace is a leftover when its record is missing or
names a process that no longer exists.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cleanroom.paths import env_dir

__all__ = [
    "OWNER_DIR",
    "OWNER_DIR_ENV",
    "forget_owner",
    "owned_elsewhere",
    "owner_dir",
    "record_owner",
]

OWNER_DIR = Path("/run/cleanroom/netns-owners")
OWNER_DIR_ENV = "CLEANROOM_NETNS_OWNER_DIR"


def owner_dir() -> Path:
    """The owner-record directory: ``$CLEANROOM_NETNS_OWNER_DIR`` if set, else
    :data:`OWNER_DIR`. Raises ``ConfigInvalid`` for a relative path."""
    return env_dir(OWNER_DIR_ENV, OWNER_DIR)


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime in clock ticks


def record_owner(netns: str, directory: Path | None = None) -> None:
    """Mark ``netns`` as owned by this process."""
    where = directory or owner_dir()
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = os.getpid()
    (where / netns).write_text(f"{pid} {_start_time(pid)}\n")


def forget_owner(netns: str, directory: Path | None = None) -> None:
    """Drop ``netns``'s owner record (after the namespace is gone)."""
    with contextlib.suppress(OSError):
        (directory or owner_dir()).joinpath(netns).unlink()


def owned_elsewhere(netns: str, directory: Path | None = None) -> bool:
    """Whether another live process owns ``netns`` (records of this process do not count:
    its own live namespaces are known to its manager)."""
    try:
        pid_text, start = (directory or owner_dir()).joinpath(netns).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    return pid != os.getpid() and _start_time(pid) == start
