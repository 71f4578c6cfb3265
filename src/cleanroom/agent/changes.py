"""The workspace manifest and what changed since: the guest side of CHANGES.

Stdlib only: this module runs inside the guest.

When a workspace is extracted the agent records a :class:`Manifest`: for
every path under the workspace (relative, ``/``-separated) its type, mode
bits, size, the sha256 of a regular file's content (hashed as it was
written) and a symlink's target, plus the ``lstat`` identity (inode, size,
mtime and ctime in ns) it had then.

:func:`compare` walks the workspace again without following symlinks and
lists what was added, modified (content, symlink target or type), deleted or
only changed mode. A regular file whose ``lstat`` identity is unchanged is
not read again: every write and chmod moves ctime, so a later write shows,
unless it lands in the same timestamp tick as the recorded ctime. A file
whose recorded ctime is that close to the moment the manifest was taken
(within :data:`RACY_MARGIN_NS`, "racily clean" as git calls it) is therefore
hashed and compared like any other file, instead of making the manifest
wait for the tick to pass (a sleep on every streamed run's path; a baseline,
with nothing to compare content with, still waits). Any other file is
hashed and compared.
Files the manifest has no hash for (a baseline taken without reading them)
count as modified when their identity moved; the host drops the ones whose
content matches its own copy.
"""

# os-level calls mirror the syscalls on purpose
from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass

__all__ = [
    "RACY_MARGIN_NS",
    "Change",
    "Entry",
    "Manifest",
    "compare",
    "file_type",
    "hash_fd",
    "open_in",
    "record_manifest",
    "walk",
]

RACY_MARGIN_NS = 20_000_000
"""Coarser than any kernel timestamp tick (HZ 100: 10 ms): a recorded ctime this close
to the manifest's time may be shared by a later write (see :meth:`Manifest.racy`)."""

_READ = 1 << 20
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_in(root: str, rel: str) -> int:
    """Open ``root/rel`` for reading without following a symlink anywhere below ``root``.

    Every directory on the way is opened relative to its parent with
    ``O_NOFOLLOW``: a process that swaps a directory for a symlink cannot make
    the agent read a file outside the workspace. Raises OSError.
    """
    *parents, name = rel.split("/")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parents:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.open(name, OPEN_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def file_type(mode: int) -> str:
    """``file``, ``dir``, ``symlink`` or ``special`` (device, fifo, socket)."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"


@dataclass(frozen=True, slots=True)
class Entry:
    """One path as recorded (or as found now)."""

    type: str
    mode: int
    size: int
    ident: tuple[int, int, int, int]
    """(inode, size, mtime_ns, ctime_ns) from lstat."""
    sha256: str | None = None
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    """The workspace as copied in: relative path -> entry."""

    entries: dict[str, Entry]
    taken_ns: int | None
    """``time.time_ns()`` once the walk was done, for a manifest with hashes (None: a
    baseline, which waited for the newest ctime's tick to pass instead)."""

    def racy(self, entry: Entry) -> bool:
        """Whether a later write to ``entry``'s file could leave its ctime (and so its
        whole identity) as recorded: its ctime falls within :data:`RACY_MARGIN_NS`
        of the manifest's time. Such a file is compared by content."""
        return self.taken_ns is not None and entry.ident[3] + RACY_MARGIN_NS > self.taken_ns


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: ``change`` is added/modified/deleted/mode_changed; ``entry`` is the
    path now (the recorded one for a deletion); ``sha256`` set if already hashed."""

    path: str
    change: str
    entry: Entry
    sha256: str | None = None


def _entry(st: os.stat_result, name: str, dir_fd: int) -> Entry:
    ftype = file_type(st.st_mode)
    return Entry(
        type=ftype,
        mode=stat.S_IMODE(st.st_mode),
        size=st.st_size if ftype == "file" else 0,
        ident=(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
        target=os.readlink(name, dir_fd=dir_fd) if ftype == "symlink" else None,
    )


def walk(root: str, skip: frozenset[str] = frozenset()) -> dict[str, Entry]:
    """Every path under ``root`` (not ``root`` itself), never following symlinks.

    Directories are opened relative to their parent with ``O_NOFOLLOW``, so a
    directory swapped for a symlink under the walk is not entered (it is
    left out, as if it had gone). ``skip`` names top-level entries to leave
    out (the agent's scratch directory).
    """
    found: dict[str, Entry] = {}
    stack = [("", os.open(root, _DIR_FLAGS))]
    try:
        while stack:
            rel_dir, dfd = stack.pop()
            try:
                for de in os.scandir(dfd):
                    if not rel_dir and de.name in skip:
                        continue
                    rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                    try:
                        entry = _entry(de.stat(follow_symlinks=False), de.name, dfd)
                        if entry.type == "dir":
                            stack.append((rel, os.open(de.name, _DIR_FLAGS, dir_fd=dfd)))
                    except (FileNotFoundError, NotADirectoryError):
                        continue  # gone (or swapped) under the walk: as if never there
                    except OSError as exc:
                        if exc.errno != errno.ELOOP:
                            raise
                        continue  # a directory swapped for a symlink: not entered
                    found[rel] = entry
            finally:
                os.close(dfd)
    finally:
        for _, dfd in stack:
            os.close(dfd)
    return found


def hash_fd(fd: int) -> str:
    """sha256 of everything ``fd`` reads from its current offset."""
    h = hashlib.sha256()
    while chunk := os.read(fd, _READ):
        h.update(chunk)
    return h.hexdigest()


def _hash_path(root: str, rel: str) -> str | None:
    """sha256 of the regular file ``rel`` under ``root`` (never through a symlink); None if
    it is gone or not a regular file any more."""
    try:
        fd = open_in(root, rel)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return hash_fd(fd)
    finally:
        os.close(fd)


def record_manifest(
    root: str, hashes: dict[str, str] | None = None, skip: frozenset[str] = frozenset()
) -> Manifest:
    """The manifest of ``root`` now; file hashes from ``hashes`` (path -> sha256), else
    none (a baseline: see the module docstring).

    With ``hashes`` (files this agent just wrote, by its own clock) it never
    waits: files written just before are compared by content later (see
    :meth:`Manifest.racy`). A baseline has no content to compare with and its
    files' ctimes come from the host's clock (up to half a second off the
    guest's), so it returns after the timestamp tick of the newest ctime has
    passed instead, so any later change moves a ctime.
    """
    found = walk(root, skip)
    taken_ns = time.time_ns()  # after the walk: no ctime this agent wrote is later
    known = hashes or {}
    newest = 0
    for rel, entry in list(found.items()):
        newest = max(newest, entry.ident[3])
        if entry.type == "file" and rel in known:
            found[rel] = Entry(entry.type, entry.mode, entry.size, entry.ident, known[rel])
    if hashes is not None:
        return Manifest(found, taken_ns)
    wait_ns = newest + RACY_MARGIN_NS - time.time_ns()
    if 0 < wait_ns <= 2 * RACY_MARGIN_NS:
        time.sleep(wait_ns / 1e9)
    return Manifest(found, None)


def compare(root: str, manifest: Manifest, skip: frozenset[str] = frozenset()) -> list[Change]:
    """What changed under ``root`` since ``manifest``, sorted by path."""
    now = walk(root, skip)
    old = manifest.entries
    changes: list[Change] = []
    for rel, cur in now.items():
        was = old.get(rel)
        if was is None:
            changes.append(Change(rel, "added", cur))
            continue
        if was.type != cur.type:
            changes.append(Change(rel, "modified", cur))
            continue
        content_changed = False
        digest = None
        if cur.type == "symlink":
            content_changed = cur.target != was.target
        elif cur.type == "file" and (cur.ident != was.ident or manifest.racy(was)):
            digest = _hash_path(root, rel)
            content_changed = was.sha256 is None or digest != was.sha256
        elif cur.type == "special":
            content_changed = cur.ident != was.ident
        if content_changed:
            changes.append(Change(rel, "modified", cur, digest))
        elif cur.mode != was.mode:
            changes.append(Change(rel, "mode_changed", cur, digest))
    changes.extend(Change(rel, "deleted", entry) for rel, entry in old.items() if rel not in now)
    changes.sort(key=lambda c: c.path)
    return changes
