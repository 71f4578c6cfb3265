"""The host's manifest of a workspace as it was copied in: the base for diffs and apply.

Taken on the host, from the tree the guest receives, at copy time: for each
path its type, permission bits, size, content sha256 (regular files) and
symlink target. Special files are left out, as the archive leaves them out.
It serializes to JSON so it can wait in the run directory until the diff is
asked for or the changes are applied.

:func:`manifest_from_archive` reads it from the very tar archive the guest
receives (exact, and immune to the tree changing meanwhile);
:func:`take_manifest` walks a tree (e.g. the private staged copy a
workspace disk is made from).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cleanroom.changes._paths import DIR_FLAGS, FILE_FLAGS
from cleanroom.errors import InvalidRequest

__all__ = [
    "HostManifest",
    "ManifestEntry",
    "hash_file_at",
    "manifest_from_archive",
    "take_manifest",
]

_READ = 1 << 20


@dataclass(frozen=True)
class ManifestEntry:
    """One path of the copied-in workspace."""

    type: str
    """``file``, ``dir`` or ``symlink``."""
    mode: int
    size: int = 0
    sha256: str | None = None
    target: str | None = None


@dataclass(frozen=True)
class HostManifest:
    """Relative path -> entry, for the workspace as copied in."""

    entries: Mapping[str, ManifestEntry]

    def to_json(self) -> str:
        return json.dumps(
            {
                p: [e.type, e.mode, e.size, e.sha256, e.target]
                for p, e in sorted(self.entries.items())
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> HostManifest:
        """Parse :meth:`to_json` output; raises ``InvalidRequest`` if malformed."""
        try:
            raw: Any = json.loads(text)
            entries = {
                str(p): ManifestEntry(str(t), int(m), int(s), h, tg)
                for p, (t, m, s, h, tg) in raw.items()
            }
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidRequest(f"workspace manifest is malformed: {exc}") from exc
        return cls(entries)


def hash_file_at(dir_fd: int, name: str) -> tuple[str, int, int] | None:
    """(sha256, size, mode) of the regular file ``name`` in ``dir_fd``; None if it is not one.

    Never follows a symlink; raises OSError for other failures than "not a file".
    """
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):  # a link, gone, a socket
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        digest, size = _sha256_sparse(fd, st.st_size)
        return digest, size, st.st_mode & 0o777
    finally:
        os.close(fd)


_ZEROS = bytes(_READ)


def _sha256_sparse(fd: int, size: int) -> tuple[str, int]:
    """sha256 of ``fd``'s first ``size`` bytes and how many there were (fewer if it
    shrank). Holes (``SEEK_DATA``) are hashed as the zeros they read as without
    reading them: a 10 GiB sparse file costs the hashing only."""
    h = hashlib.sha256()
    pos = 0
    while pos < size:
        try:
            data = min(os.lseek(fd, pos, os.SEEK_DATA), size)
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size) if data < size else size
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: only a hole is left
                data, hole = pos, size  # holes unknown here: read it all
            else:
                data = hole = size
        while pos < data:
            n = min(_READ, data - pos)
            h.update(_ZEROS[:n] if n < _READ else _ZEROS)
            pos += n
        while pos < hole:
            chunk = os.pread(fd, min(_READ, hole - pos), pos)
            if not chunk:
                return h.hexdigest(), pos
            h.update(chunk)
            pos += len(chunk)
    return h.hexdigest(), pos


def take_manifest(root: Path) -> HostManifest:
    """The manifest of the tree at ``root`` (never following symlinks).

    Raises ``InvalidRequest`` when ``root`` is not a readable directory.
    """
    entries: dict[str, ManifestEntry] = {}
    try:
        top = os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise InvalidRequest(f"workspace {root} is not a readable directory: {exc}") from exc
    stack: list[tuple[str, int]] = [("", top)]
    try:
        while stack:
            rel_dir, dfd = stack.pop()
            try:
                for de in os.scandir(dfd):
                    rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                    st = de.stat(follow_symlinks=False)
                    mode = st.st_mode & 0o777  # what the guest gets (no setuid/sticky)
                    if stat.S_ISDIR(st.st_mode):
                        entries[rel] = ManifestEntry("dir", mode)
                        stack.append((rel, os.open(de.name, DIR_FLAGS, dir_fd=dfd)))
                    elif stat.S_ISLNK(st.st_mode):
                        target = os.readlink(de.name, dir_fd=dfd)
                        entries[rel] = ManifestEntry("symlink", mode, target=target)
                    elif stat.S_ISREG(st.st_mode):
                        got = hash_file_at(dfd, de.name)
                        if got is not None:
                            entries[rel] = ManifestEntry("file", got[2], got[1], got[0])
            finally:
                os.close(dfd)
    except OSError as exc:
        for _, dfd in stack:
            os.close(dfd)
        raise InvalidRequest(f"workspace {root} could not be read: {exc}") from exc
    return HostManifest(entries)


def _member_path(name: str) -> str | None:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or name.startswith("/"):
        return None  # the archive root, or a member the guest refuses anyway
    return "/".join(parts)


def manifest_from_archive(archive: Path | IO[bytes]) -> HostManifest:
    """The manifest of a workspace tar archive (as made for the guest), read in one pass.

    Later members replace earlier ones, hard links take their target's
    entry, special members are left out, as the guest's extraction does.
    Raises ``InvalidRequest`` for an unreadable or corrupt archive.
    """
    entries: dict[str, ManifestEntry] = {}
    try:
        with (
            tarfile.open(archive, mode="r|*")
            if isinstance(archive, Path)
            else tarfile.open(fileobj=archive, mode="r|*") as tf
        ):
            for member in tf:
                rel = _member_path(member.name)
                if rel is None:
                    continue
                mode = member.mode & 0o777  # the guest clears setuid/setgid/sticky
                if member.isdir():
                    entries[rel] = ManifestEntry("dir", mode)
                elif member.issym():
                    entries[rel] = ManifestEntry("symlink", 0o777, target=member.linkname)
                elif member.islnk():
                    target = _member_path(member.linkname)
                    if target is not None and target in entries:
                        entries[rel] = entries[target]
                elif member.isreg():
                    src = tf.extractfile(member)
                    h = hashlib.sha256()
                    size = 0
                    while src is not None and (chunk := src.read(_READ)):
                        h.update(chunk)
                        size += len(chunk)
                    entries[rel] = ManifestEntry("file", mode, size, h.hexdigest())
    except (OSError, tarfile.TarError) as exc:
        raise InvalidRequest(f"workspace archive could not be read: {exc}") from exc
    return HostManifest(entries)
