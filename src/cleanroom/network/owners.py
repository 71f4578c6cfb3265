"""Which process owns a run namespace, so that reconciling never touches a live server's.

Namespace names are host-wide, so the owner records are too: one file per
namespace under :data:`OWNER_DIR` holding the owner's PID and its start time
(which tells a reused PID apart). A namespace is a leftover when its record is
missing or names a process that no longer exists.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["OWNER_DIR", "forget_owner", "owned_elsewhere", "record_owner"]

OWNER_DIR = Path("/run/cleanroom/netns-owners")


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime in clock ticks


def record_owner(netns: str, owner_dir: Path = OWNER_DIR) -> None:
    """Mark ``netns`` as owned by this process."""
    owner_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = os.getpid()
    (owner_dir / netns).write_text(f"{pid} {_start_time(pid)}\n")


def forget_owner(netns: str, owner_dir: Path = OWNER_DIR) -> None:
    """Drop ``netns``'s owner record (after the namespace is gone)."""
    with contextlib.suppress(OSError):
        (owner_dir / netns).unlink()


def owned_elsewhere(netns: str, owner_dir: Path = OWNER_DIR) -> bool:
    """Whether another live process owns ``netns`` (records of this process do not count:
    its own live namespaces are known to its manager)."""
    try:
        pid_text, start = (owner_dir / netns).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    return pid != os.getpid() and _start_time(pid) == start
