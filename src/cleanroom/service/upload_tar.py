"""Extract an uploaded workspace archive strictly: hostile input, bounded work.

The archive is a client's, so nothing in it is trusted. It is read as a
stream (never held whole) one 512-byte header at a time; the standard
library parses each header (``TarInfo.frombuf``: checksum, number fields),
everything else is checked here, member by member, before anything is
written:

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cleanroom.config_limits import LimitsConfig
from cleanroom.errors import WorkspaceInvalid, WorkspaceTooLarge

__all__ = ["UploadLimits", "UploadStats", "extract_upload"]

BLOCK = 512
_PIECE = 256 * 1024
_EXT_BYTES = 64 * 1024  # a PAX or long-name header's data
_TRAILER_BYTES = 1 << 20  # zero padding after the end-of-archive marker
_MAX_EXT_CHAIN = 4
_MAX_MTIME = 1 << 40
_PAX_KEYS = frozenset(
    {"path", "linkpath", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"}
    | {"charset", "comment", "hdrcharset"}
)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_EXISTING = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)

Read = Callable[[int], bytes]
"""Returns up to ``n`` bytes of the stream; ``b""`` at its end."""


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one uploaded archive (sizes come from the runtime config's ``limits``)."""

    apparent_bytes: int
    allocated_bytes: int
    members: int = 1_000_000
    path_bytes: int = 4096
    name_bytes: int = 255
    depth: int = 256
    header_bytes: int = 256 << 20
    """Headers (extended ones included) in the whole archive."""

    @classmethod
    def of(cls, limits: LimitsConfig) -> UploadLimits:
        """The bounds the runtime config's ``limits`` give a local workspace."""
        return cls(limits.workspace_apparent_bytes, limits.workspace_bytes)


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


def _invalid(message: str, **details: object) -> WorkspaceInvalid:
    return WorkspaceInvalid(
        f"the uploaded workspace archive is invalid: {message}", details=details
    )


class _Stream:
    """Exact reads from ``read``, counting bytes."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self.consumed = 0
        self.headers = 0
        """Bytes of headers read (extended headers' data included)."""

    def exact(self, size: int) -> bytes:
        parts: list[bytes] = []
        left = size
        while left > 0:
            piece = self._read(min(left, _PIECE))
            if not piece:
                raise _invalid("it ends in the middle of a member")
            parts.append(piece)
            left -= len(piece)
        self.consumed += size
        return b"".join(parts)

    def pieces(self, size: int) -> Iterator[bytes]:
        left = size
        while left > 0:
            piece = self.exact(min(left, _PIECE))
            left -= len(piece)
            yield piece

    def skip_padding(self, size: int) -> None:
        self.exact(-size % BLOCK)

    def rest(self, bound: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while piece := self._read(_PIECE):
            total += len(piece)
            if total > bound:
                raise _invalid("too much data after the end-of-archive marker")
            parts.append(piece)
        self.consumed += total
        return b"".join(parts)


def _parts(name: str, limits: UploadLimits, what: str) -> list[str]:
    """A member or hard link name as its components; raises ``WorkspaceInvalid``."""
    if len(name.encode("utf-8", "surrogateescape")) > limits.path_bytes:
        raise _invalid(f"a {what} is longer than {limits.path_bytes} bytes", path=name[:200])
    if name.startswith("/"):
        raise _invalid(f"a {what} is absolute", path=name[:200])
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _invalid(f"a {what} contains '..'", path=name[:200])
    if len(parts) > limits.depth:
        raise _invalid(f"a {what} is deeper than {limits.depth}", path=name[:200])
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > limits.name_bytes:
            raise _invalid(f"a {what} has a component over {limits.name_bytes} bytes")
    return parts


def _check_symlink(parts: list[str], target: str, limits: UploadLimits) -> None:
    """A symlink target that climbs at most to the root, then only descends."""
    if not target or len(target.encode("utf-8", "surrogateescape")) > limits.path_bytes:
        raise _invalid("a symlink target is empty or too long", path="/".join(parts)[:200])
    if target.startswith("/"):
        raise _invalid("a symlink points to an absolute path", path="/".join(parts)[:200])
    steps = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(steps) and steps[ups] == "..":
        ups += 1
    if ups > len(parts) - 1 or ".." in steps[ups:]:
        raise _invalid("a symlink points outside the workspace", path="/".join(parts)[:200])


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
                    raise _invalid("a member's parent is not a directory") from exc
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
                raise _invalid("a name is given twice", path="/".join(parts)[:200]) from exc
            try:
                os.fchmod(child, (mode & 0o777) | 0o700)
            finally:
                os.close(child)
        finally:
            os.close(fd)

    def file(self, parts: list[str], info: tarfile.TarInfo, stream: _Stream) -> None:
        if not parts:
            raise _invalid("a file has an empty name")
        self.bytes += info.size
        if self.bytes > self._limits.apparent_bytes:
            raise WorkspaceTooLarge(
                "the uploaded workspace holds more than limits.workspace_apparent_bytes "
                f"({self._limits.apparent_bytes})",
                details={"limit": "workspace_apparent_bytes", "bytes": self.bytes,
                         "max_bytes": self._limits.apparent_bytes},
            )  # fmt: skip
        fd = self._parent(parts)
        try:
            try:
                out = os.open(parts[-1], _NEW_FILE, (info.mode & 0o777) | 0o600, dir_fd=fd)
            except FileExistsError as exc:
                raise _invalid("a name is given twice", path="/".join(parts)[:200]) from exc
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
            raise WorkspaceTooLarge(
                "the uploaded workspace takes more than limits.workspace_bytes "
                f"({self._limits.allocated_bytes})",
                details={"limit": "workspace_bytes", "bytes": self.allocated,
                         "max_bytes": self._limits.allocated_bytes},
            )  # fmt: skip

    def symlink(self, parts: list[str], target: str) -> None:
        if not parts:
            raise _invalid("a symlink has an empty name")
        _check_symlink(parts, target, self._limits)
        fd = self._parent(parts)
        try:
            os.symlink(target, parts[-1], dir_fd=fd)
        except FileExistsError as exc:
            raise _invalid("a name is given twice", path="/".join(parts)[:200]) from exc
        finally:
            os.close(fd)
        self.links += 1

    def hardlink(self, parts: list[str], target: list[str]) -> None:
        if not parts or not target:
            raise _invalid("a hard link has an empty name or target")
        src_dir = self._parent(target, create=False)
        try:
            try:
                src = os.open(target[-1], _EXISTING, dir_fd=src_dir)
            except OSError as exc:
                raise _invalid("a hard link names no file before it") from exc
            try:
                if not stat.S_ISREG(os.fstat(src).st_mode):
                    raise _invalid("a hard link names something other than a file")
            finally:
                os.close(src)
            dst_dir = self._parent(parts)
            try:
                os.link(target[-1], parts[-1], src_dir_fd=src_dir, dst_dir_fd=dst_dir,
                        follow_symlinks=False)  # fmt: skip
            except FileExistsError as exc:
                raise _invalid("a name is given twice", path="/".join(parts)[:200]) from exc
            finally:
                os.close(dst_dir)
        finally:
            os.close(src_dir)
        self.hardlinks += 1


def _header(stream: _Stream) -> tarfile.TarInfo | None:
    """The next header (None: the end-of-archive marker)."""
    block = stream.exact(BLOCK)
    if block == bytes(BLOCK):
        return None
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError) as exc:
        raise _invalid(f"a header is malformed ({exc})") from exc


def _pax(data: bytes) -> dict[str, str]:
    """PAX records ``"LEN key=value\\n"``, strictly."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            raise _invalid("a PAX header is malformed")
        end = pos + int(data[pos:space])
        if end > len(data) or end <= space or data[end - 1 : end] != b"\n":
            raise _invalid("a PAX header is malformed")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        name = key.decode("utf-8", "surrogateescape")
        if not eq or (name not in _PAX_KEYS and not name.startswith(("SCHILY.", "LIBARCHIVE."))):
            raise _invalid(f"a PAX header has an unsupported record {name[:40]!r}")
        records[name] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


def _member(stream: _Stream, limits: UploadLimits) -> tarfile.TarInfo | None:
    """The next member with its PAX and GNU long-name headers applied."""
    pax: dict[str, str] = {}
    long_name = long_link = None
    for _ in range(_MAX_EXT_CHAIN + 1):
        if stream.headers > limits.header_bytes:
            raise _invalid(f"its headers take more than {limits.header_bytes} bytes")
        info = _header(stream)
        stream.headers += BLOCK
        if info is None:
            if pax or long_name is not None or long_link is not None:
                raise _invalid("the archive ends after an extended header")
            return None
        if info.type not in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            break
        if info.size > _EXT_BYTES:
            raise _invalid("an extended header is too large")
        data = stream.exact(info.size)
        stream.skip_padding(info.size)
        stream.headers += -(-info.size // BLOCK) * BLOCK
        if info.type == tarfile.XHDTYPE:
            pax.update(_pax(data))
        elif info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        else:
            long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    else:
        raise _invalid("too many extended headers in a row")
    if long_name is not None:
        info.name = long_name
    if long_link is not None:
        info.linkname = long_link
    if "path" in pax:
        info.name = pax["path"]
    if "linkpath" in pax:
        info.linkname = pax["linkpath"]
    if "size" in pax:
        if not pax["size"].isdigit():
            raise _invalid("a PAX size is not a number")
        info.size = int(pax["size"])
    if info.type in _REGULAR and info.name.endswith("/"):
        info.type = tarfile.DIRTYPE
    return info


def extract_upload(read: Read, dest: Path, limits: UploadLimits) -> UploadStats:
    """Extract the tar stream ``read`` gives into the empty directory ``dest``.

    Raises ``WorkspaceInvalid`` (see the module doc) or ``WorkspaceTooLarge``;
    what was written before the failure stays in ``dest`` for the caller to remove.
    """
    stream = _Stream(read)
    out = _Extractor(dest, limits)
    members = 0
    try:
        while (info := _member(stream, limits)) is not None:
            members += 1
            if members > limits.members:
                raise _invalid(f"it has more than {limits.members} members")
            parts = _parts(info.name, limits, "member name")
            if info.type in _REGULAR:
                out.file(parts, info, stream)
            elif info.size:
                raise _invalid("only regular files carry data", path=info.name[:200])
            elif info.type == tarfile.DIRTYPE:
                out.directory(parts, info.mode)
            elif info.type == tarfile.SYMTYPE:
                out.symlink(parts, info.linkname)
            elif info.type == tarfile.LNKTYPE:
                out.hardlink(parts, _parts(info.linkname, limits, "hard link target"))
            else:
                raise _invalid(
                    f"member type {info.type!r} is not allowed (files, directories and links only)",
                    path=info.name[:200],
                )
        if any(stream.rest(_TRAILER_BYTES)):
            raise _invalid("data follows the end-of-archive marker")
    except OSError as exc:
        raise _invalid(f"it could not be written ({exc.strerror or exc})") from exc
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
