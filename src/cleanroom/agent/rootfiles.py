"""File operations inside a user image's tree that never follow the image's links.

Stdlib only: this module runs inside the guest. The image's files are the
user's: a symlink there must not make the agent read, write or chown its own
runtime's files instead, and nothing in the tree is trusted to be what its
name says (a directory, a regular file).
"""

# raw fd-relative file handling inside the guest
# ruff: noqa: PTH102, PTH108
from __future__ import annotations

import errno
import os
import stat

__all__ = ["ImageRootError", "chown_tree", "read_in_root", "real_dir", "replace_etc_file"]


class ImageRootError(Exception):
    """The command root cannot be built (bad disks, settings or user)."""


def real_dir(path: str) -> None:
    """Make ``path`` a real directory: anything else there (a symlink from the image,
    a file) is removed first, so no mount ever follows a link out of the root."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o755)
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        os.mkdir(path, 0o755)


def read_in_root(root: str, rel: str, limit: int) -> bytes | None:
    """The file ``root/rel`` read without following any symlink; None if absent.

    The image's files are the user's: a link there must not make the agent read
    its own runtime's files instead."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags | os.O_DIRECTORY)
    try:
        for part in rel.split("/")[:-1]:
            try:
                nfd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                return None
            os.close(fd)
            fd = nfd
        try:
            ffd = os.open(rel.rsplit("/", 1)[-1], flags, dir_fd=fd)
        except FileNotFoundError:
            return None
        with os.fdopen(ffd, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # a symlink: treated as absent
        raise
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ImageRootError(f"/{rel} in the image is larger than {limit} bytes")
    return data


def chown_tree(top: str, uid: int, gid: int) -> int:
    """``lchown`` everything under ``top`` (itself included, symlinks not followed,
    other filesystems not entered) that is not owned by ``uid:gid`` yet; the count."""
    changed = 0
    dev = os.lstat(top).st_dev
    stack = [top]
    st = os.lstat(top)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.lchown(top, uid, gid)
        changed += 1
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                est = entry.stat(follow_symlinks=False)
                if est.st_dev != dev:
                    continue
                if (est.st_uid, est.st_gid) != (uid, gid):
                    os.lchown(entry.path, uid, gid)
                    changed += 1
                if stat.S_ISDIR(est.st_mode):
                    stack.append(entry.path)
    return changed


def replace_etc_file(root: str, name: str, text: str) -> None:
    """Write ``root/etc/name`` afresh (in the writable layer), as container runtimes
    do for hosts, hostname and resolv.conf: whatever the image has there (a file,
    a link pointing anywhere) is replaced, never followed."""
    real_dir(f"{root}/etc")
    path = f"{root}/etc/{name}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            raise ImageRootError(f"/etc/{name} in the image is a directory")
        os.unlink(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
