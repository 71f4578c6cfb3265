"""Sending workspace files back to the host: the reply stream of CHANGES and ARTIFACTS.

Stdlib only: this module runs inside the guest.

A reply is FILE_ENTRY frames, each regular file with ``content`` followed by
exactly its ``size`` bytes in FILE_DATA frames, then FILES_DONE. The caps of
the request are applied here: past ``max_files`` entries nothing more is
listed; a file over ``max_file_bytes``, or one that would take the content
sent past ``max_total_bytes``, is listed with ``skipped`` and no content.
Every cap that bit is named in FILES_DONE. Devices, fifos and sockets are
listed as ``skipped: special``, never opened.

A file is opened without following a symlink anywhere below the workspace
(each parent directory opened with ``O_NOFOLLOW``), hashed, then sent from the same
descriptor; if what is sent no longer matches the hash (something wrote to it
meanwhile) the reply ends with ERROR ``changes_failed`` and the host drops it.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable

from cleanroom.agent.changes import Change, Entry, hash_fd, open_in, walk
from cleanroom.agent.errors import GuestOperationFailed
from cleanroom.agent.filemessages import FileEntry, FileLimits, FilesDone
from cleanroom.agent.protocol import ERR_CHANGES, MAX_DATA_CHUNK, FrameType, encode_frame

__all__ = ["glob_match", "match_artifacts", "send_files"]

Send = Callable[[bytes], None]


def glob_match(pattern: str, path: str) -> bool:
    """Whether the relative ``path`` matches ``pattern``, component by component.

    ``*``, ``?`` and ``[...]`` match within one component (leading dots too);
    a ``**`` component matches any number of components, including none.
    """
    pat, parts = pattern.split("/"), path.split("/")

    def match(i: int, j: int) -> bool:
        while i < len(pat):
            if pat[i] == "**":
                return any(match(i + 1, k) for k in range(j, len(parts) + 1))
            if j >= len(parts) or not fnmatch.fnmatchcase(parts[j], pat[i]):
                return False
            i, j = i + 1, j + 1
        return j == len(parts)

    return match(0, 0)


def match_artifacts(root: str, patterns: Iterable[str]) -> list[Change]:
    """Regular files under ``root`` matching any pattern, sorted by path (as ``artifact``)."""
    pats = list(patterns)
    return sorted(
        (
            Change(rel, "artifact", entry)
            for rel, entry in walk(root).items()
            if entry.type == "file" and any(glob_match(p, rel) for p in pats)
        ),
        key=lambda c: c.path,
    )


def _send_content(send: Send, fd: int, size: int, digest: str) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    import hashlib  # noqa: PLC0415 -- only replies with content need it

    h = hashlib.sha256()
    left = size
    while left:
        chunk = os.read(fd, min(MAX_DATA_CHUNK, left))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
        send(encode_frame(FrameType.FILE_DATA, chunk))
    if left or os.read(fd, 1) or h.hexdigest() != digest:
        raise GuestOperationFailed(ERR_CHANGES, "a file changed while it was being sent")


def send_files(send: Send, root: str, changes: list[Change], limits: FileLimits) -> FilesDone:
    """Send ``changes`` (paths relative to ``root``) under ``limits``; returns what was sent."""
    caps: list[str] = []
    entries = total = 0
    for change in changes:
        if entries >= limits.max_files:
            caps.append("max_files")
            break
        entries += 1
        e: Entry = change.entry
        if change.change == "deleted":
            send(FileEntry(change.path, "deleted", e.type).to_frame())
            continue
        if e.type != "file" or change.change == "mode_changed":
            skipped = "special" if e.type == "special" else None
            size = e.size if e.type == "file" else None
            entry = FileEntry(
                change.path, change.change, e.type, e.mode, size, None, e.target, skipped=skipped
            )
            send(entry.to_frame())
            continue
        total += _send_file(send, root, change, limits, total, caps)
    return FilesDone(entries, total, tuple(dict.fromkeys(caps)))


def _send_file(
    send: Send, root: str, change: Change, limits: FileLimits, total: int, caps: list[str]
) -> int:
    """One regular file: entry (and content when within the caps); the content bytes sent."""
    path, kind = change.path, change.change
    try:
        fd = open_in(root, path)
    except OSError:
        send(FileEntry(path, kind, "file", change.entry.mode, skipped="unreadable").to_frame())
        return 0
    try:
        st = os.fstat(fd)
        mode, size = stat.S_IMODE(st.st_mode), st.st_size
        if not stat.S_ISREG(st.st_mode):
            send(FileEntry(path, kind, "file", mode, skipped="unreadable").to_frame())
            return 0
        reason = None
        if size > limits.max_file_bytes:
            reason = "max_file_bytes"
        elif total + size > limits.max_total_bytes:
            reason = "max_total_bytes"
        if reason is not None:
            caps.append(reason)
            skipped = "too_large" if reason == "max_file_bytes" else "total_bytes"
            send(FileEntry(path, kind, "file", mode, size, skipped=skipped).to_frame())
            return 0
        digest = hash_fd(fd)
        send(FileEntry(path, kind, "file", mode, size, digest, content=True).to_frame())
        _send_content(send, fd, size, digest)
        return size
    finally:
        os.close(fd)
