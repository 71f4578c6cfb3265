"""Extract an uploaded workspace archive strictly: hostile input, bounded work.

The archive is a client's, so nothing in it is trusted. It is read as a
stream (never held whole), one member at a time (see
:mod:`cleanroom.service.upload_members`), and each member is checked before
anything is written:

- names are relative, without ``..``, at most :attr:`UploadLimits.path_bytes`
  bytes, :attr:`UploadLimits.name_bytes` per component and
  :attr:`UploadLimits.depth` deep; ``./`` prefixes are dropped;
- members are regular files, directories, symlinks and hard links only (no
  devices, FIFOs, sparse files or global headers); PAX (``x``) and GNU long
  name (``L``/``K``) headers are read within a small bound;
- a symlink's target is relative and of the form ``../``\\* then names: it
  climbs at most to the tree's root and never climbs again, so following it
  (and any chain of such links) stays in the tree; a hard link names a
  regular file extracted before;
- at most :attr:`UploadLimits.members` members, their sizes within the
  workspace caps (apparent bytes before writing, allocated bytes after).

Writing never follows a symlink: every directory on the way is opened with
``O_NOFOLLOW`` relative to its parent's descriptor, files are created with
``O_EXCL`` (a name given twice is refused), so a member can never land
outside the destination. Modes keep their permission bits (the owner may
always read and write); owners are not restored. Every failure is
``WorkspaceInvalid`` or ``WorkspaceTooLarge``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cleanroom.errors import WorkspaceTooLarge
from cleanroom.service.upload_members import (
    REGULAR,
    Read,
    TarStream,
    UploadLimits,
    check_symlink,
    invalid,
    member_parts,
    next_member,
)

__all__ = ["UploadLimits", "UploadStats", "extract_upload"]

_TRAILER_BYTES = 1 << 20  # zero padding after the end-of-archive marker
_MAX_MTIME = 1 << 40
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_EXISTING = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class UploadStats:
    """What was extracted."""

    files: int
    directories: int
    symlinks: int
    hardlinks: int
    bytes: int
    """Sum of regular file sizes."""
    allocated: int
    """Sum of the written files' allocated bytes."""
    archive_bytes: int
    """Bytes of the stream read."""


def _too_large(verb: str, limit: str, used: int, cap: int) -> WorkspaceTooLarge:
    """The upload passed ``limits.<limit>`` (``cap``) at ``used`` bytes."""
    return WorkspaceTooLarge(
        f"the uploaded workspace {verb} more than limits.{limit} ({cap})",
        details={"limit": limit, "bytes": used, "max_bytes": cap},
    )


class _Extractor:
    def __init__(self, dest: Path, limits: UploadLimits) -> None:
        self._limits = limits
        self._root = os.open(dest, _DIR)
        self.files = self.dirs = self.links = self.hardlinks = 0
        self.bytes = self.allocated = 0

    def close(self) -> None:
        os.close(self._root)

    def _parent(self, parts: list[str], *, create: bool = True) -> int:
        """A descriptor of the member's parent directory (missing ones are made
        when ``create``)."""
        fd = os.dup(self._root)
        try:
            for part in parts[:-1]:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                try:
                    child = os.open(part, _DIR, dir_fd=fd)
                except OSError as exc:  # a symlink or a file where a directory must be
                    raise invalid("a member's parent is not a directory") from exc
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def directory(self, parts: list[str], mode: int) -> None:
        if not parts:
            return  # the root itself
        fd = self._parent(parts)
        try:
            try:
                os.mkdir(parts[-1], 0o700, dir_fd=fd)
                self.dirs += 1
            except FileExistsError:
                pass
            try:
                child = os.open(parts[-1], _DIR, dir_fd=fd)
            except OSError as exc:
                raise invalid("a name is given twice", path="/".join(parts)[:200]) from exc
            try:
                os.fchmod(child, (mode & 0o777) | 0o700)
            finally:
                os.close(child)
        finally:
            os.close(fd)

    def file(self, parts: list[str], info: tarfile.TarInfo, stream: TarStream) -> None:
        if not parts:
            raise invalid("a file has an empty name")
        self.bytes += info.size
        if self.bytes > self._limits.apparent_bytes:
            raise _too_large(
                "holds", "workspace_apparent_bytes", self.bytes, self._limits.apparent_bytes
            )
        fd = self._parent(parts)
        try:
            try:
                out = os.open(parts[-1], _NEW_FILE, (info.mode & 0o777) | 0o600, dir_fd=fd)
            except FileExistsError as exc:
                raise invalid("a name is given twice", path="/".join(parts)[:200]) from exc
        finally:
            os.close(fd)
        try:
            for piece in stream.pieces(info.size):
                os.write(out, piece)
            os.fchmod(out, (info.mode & 0o777) | 0o600)
            mtime = info.mtime if 0 <= info.mtime < _MAX_MTIME else 0
            os.utime(out, (mtime, mtime))
            self.allocated += os.fstat(out).st_blocks * 512
        finally:
            os.close(out)
        stream.skip_padding(info.size)
        self.files += 1
        if self.allocated > self._limits.allocated_bytes:
            raise _too_large(
                "takes", "workspace_bytes", self.allocated, self._limits.allocated_bytes
            )

    def symlink(self, parts: list[str], target: str) -> None:
        if not parts:
            raise invalid("a symlink has an empty name")
        check_symlink(parts, target, self._limits)
        fd = self._parent(parts)
        try:
            os.symlink(target, parts[-1], dir_fd=fd)
        except FileExistsError as exc:
            raise invalid("a name is given twice", path="/".join(parts)[:200]) from exc
        finally:
            os.close(fd)
        self.links += 1

    def hardlink(self, parts: list[str], target: list[str]) -> None:
        if not parts or not target:
            raise invalid("a hard link has an empty name or target")
        src_dir = self._parent(target, create=False)
        try:
            try:
                src = os.open(target[-1], _EXISTING, dir_fd=src_dir)
            except OSError as exc:
                raise invalid("a hard link names no file before it") from exc
            try:
                if not stat.S_ISREG(os.fstat(src).st_mode):
                    raise invalid("a hard link names something other than a file")
            finally:
                os.close(src)
            dst_dir = self._parent(parts)
            try:
                os.link(target[-1], parts[-1], src_dir_fd=src_dir, dst_dir_fd=dst_dir,
                        follow_symlinks=False)  # fmt: skip
            except FileExistsError as exc:
                raise invalid("a name is given twice", path="/".join(parts)[:200]) from exc
            finally:
                os.close(dst_dir)
        finally:
            os.close(src_dir)
        self.hardlinks += 1


def extract_upload(read: Read, dest: Path, limits: UploadLimits) -> UploadStats:
    """Extract the tar stream ``read`` gives into the empty directory ``dest``.

    Raises ``WorkspaceInvalid`` (see the module doc) or ``WorkspaceTooLarge``;
    what was written before the failure stays in ``dest`` for the caller to remove.
    """
    stream = TarStream(read)
    out = _Extractor(dest, limits)
    members = 0
    try:
        while (info := next_member(stream, limits)) is not None:
            members += 1
            if members > limits.members:
                raise invalid(f"it has more than {limits.members} members")
            parts = member_parts(info.name, limits, "member name")
            if info.type in REGULAR:
                out.file(parts, info, stream)
            elif info.size:
                raise invalid("only regular files carry data", path=info.name[:200])
            elif info.type == tarfile.DIRTYPE:
                out.directory(parts, info.mode)
            elif info.type == tarfile.SYMTYPE:
                out.symlink(parts, info.linkname)
            elif info.type == tarfile.LNKTYPE:
                out.hardlink(parts, member_parts(info.linkname, limits, "hard link target"))
            else:
                raise invalid(
                    f"member type {info.type!r} is not allowed (files, directories and links only)",
                    path=info.name[:200],
                )
        if any(stream.rest(_TRAILER_BYTES)):
            raise invalid("data follows the end-of-archive marker")
    except OSError as exc:
        raise invalid(f"it could not be written ({exc.strerror or exc})") from exc
    finally:
        out.close()
    return UploadStats(
        files=out.files,
        directories=out.dirs,
        symlinks=out.links,
        hardlinks=out.hardlinks,
        bytes=out.bytes,
        allocated=out.allocated,
        archive_bytes=stream.consumed,
    )
