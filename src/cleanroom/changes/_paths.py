"""Validated relative paths and symlink-free directory access under a host root.

Everything here refuses to follow a symlink: each directory on the way to a
path is opened relative to its parent with ``O_NOFOLLOW | O_DIRECTORY``, so a
symlink planted anywhere in the tree makes the operation fail instead of
escaping the root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from cleanroom.agent.errors import AgentProtocolError
from cleanroom.agent.filemessages import check_rel_path
from cleanroom.errors import GuestAgentFailed

__all__ = [
    "DIR_FLAGS",
    "FILE_FLAGS",
    "NEW_FILE_FLAGS",
    "guest_path",
    "open_parent",
    "split",
    "symlink_escapes",
]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file must not block the open.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# Creating a file: never one that exists, never through a symlink.
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def guest_path(path: str) -> str:
    """``path`` if it is a normalized relative path; else ``GuestAgentFailed``."""
    try:
        return check_rel_path(path, "path from the guest")
    except AgentProtocolError as exc:
        raise GuestAgentFailed(exc.message, details={"reason": "invalid_path"}) from exc


def split(path: str) -> tuple[list[str], str]:
    """(parent components, last name) of a validated relative path."""
    parts = path.split("/")
    return parts[:-1], parts[-1]


@contextmanager
def open_parent(root: str | os.PathLike[str], path: str, *, create: bool = False) -> Iterator[int]:
    """A descriptor of the directory holding ``path`` under ``root``, never via a symlink.

    With ``create`` missing directories are made (mode 0o755). Raises OSError
    (``ELOOP``/``ENOTDIR`` for a symlink or file on the way, ``ENOENT``).
    """
    parents, _ = split(path)
    fd = os.open(root, DIR_FLAGS)
    try:
        for name in parents:
            try:
                nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def symlink_escapes(path: str, target: str) -> bool:
    """Whether a symlink at ``path`` with ``target`` is absolute or points above the root."""
    if not target or target.startswith("/"):
        return True
    depth = len(path.split("/")) - 1
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        depth += -1 if comp == ".." else 1
        if depth < 0:
            return True
    return False
