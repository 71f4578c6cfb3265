"""Reading an uploaded tar stream: one member at a time, strictly, within bounds.

The standard library parses each 512-byte header (``TarInfo.frombuf``:
checksum, number fields); PAX (``x``) and GNU long-name (``L``/``K``) headers
are read here within a small bound, and names and symlink targets are
checked before the extractor (:mod:`cleanroom.service.upload_tar`) sees them.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cleanroom.config_limits import LimitsConfig
from cleanroom.errors import WorkspaceInvalid

__all__ = [
    "BLOCK",
    "REGULAR",
    "Read",
    "TarStream",
    "UploadLimits",
    "check_symlink",
    "invalid",
    "member_parts",
    "next_member",
]

BLOCK = 512
_PIECE = 256 * 1024
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
"""The regular file types."""
_EXT_BYTES = 64 * 1024  # a PAX or long-name header's data
_MAX_EXT_CHAIN = 4
_PAX_KEYS = frozenset(
    {"path", "linkpath", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"}
    | {"charset", "comment", "hdrcharset"}
)

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


def invalid(message: str, **details: object) -> WorkspaceInvalid:
    return WorkspaceInvalid(
        f"the uploaded workspace archive is invalid: {message}", details=details
    )


class TarStream:
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
                raise invalid("it ends in the middle of a member")
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
                raise invalid("too much data after the end-of-archive marker")
            parts.append(piece)
        self.consumed += total
        return b"".join(parts)


def member_parts(name: str, limits: UploadLimits, what: str) -> list[str]:
    """A member or hard link name as its components; raises ``WorkspaceInvalid``."""
    if len(name.encode("utf-8", "surrogateescape")) > limits.path_bytes:
        raise invalid(f"a {what} is longer than {limits.path_bytes} bytes", path=name[:200])
    if name.startswith("/"):
        raise invalid(f"a {what} is absolute", path=name[:200])
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise invalid(f"a {what} contains '..'", path=name[:200])
    if len(parts) > limits.depth:
        raise invalid(f"a {what} is deeper than {limits.depth}", path=name[:200])
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > limits.name_bytes:
            raise invalid(f"a {what} has a component over {limits.name_bytes} bytes")
    return parts


def check_symlink(parts: list[str], target: str, limits: UploadLimits) -> None:
    """A symlink target that climbs at most to the root, then only descends."""
    if not target or len(target.encode("utf-8", "surrogateescape")) > limits.path_bytes:
        raise invalid("a symlink target is empty or too long", path="/".join(parts)[:200])
    if target.startswith("/"):
        raise invalid("a symlink points to an absolute path", path="/".join(parts)[:200])
    steps = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(steps) and steps[ups] == "..":
        ups += 1
    if ups > len(parts) - 1 or ".." in steps[ups:]:
        raise invalid("a symlink points outside the workspace", path="/".join(parts)[:200])


def _header(stream: TarStream) -> tarfile.TarInfo | None:
    """The next header (None: the end-of-archive marker)."""
    block = stream.exact(BLOCK)
    if block == bytes(BLOCK):
        return None
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError) as exc:
        raise invalid(f"a header is malformed ({exc})") from exc


def _pax(data: bytes) -> dict[str, str]:
    """PAX records ``"LEN key=value\\n"``, strictly."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            raise invalid("a PAX header is malformed")
        end = pos + int(data[pos:space])
        if end > len(data) or end <= space or data[end - 1 : end] != b"\n":
            raise invalid("a PAX header is malformed")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        name = key.decode("utf-8", "surrogateescape")
        if not eq or (name not in _PAX_KEYS and not name.startswith(("SCHILY.", "LIBARCHIVE."))):
            raise invalid(f"a PAX header has an unsupported record {name[:40]!r}")
        records[name] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


def next_member(stream: TarStream, limits: UploadLimits) -> tarfile.TarInfo | None:
    """The next member with its PAX and GNU long-name headers applied."""
    pax: dict[str, str] = {}
    long_name = long_link = None
    for _ in range(_MAX_EXT_CHAIN + 1):
        if stream.headers > limits.header_bytes:
            raise invalid(f"its headers take more than {limits.header_bytes} bytes")
        info = _header(stream)
        stream.headers += BLOCK
        if info is None:
            if pax or long_name is not None or long_link is not None:
                raise invalid("the archive ends after an extended header")
            return None
        if info.type not in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            break
        if info.size > _EXT_BYTES:
            raise invalid("an extended header is too large")
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
        raise invalid("too many extended headers in a row")
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
            raise invalid("a PAX size is not a number")
        info.size = int(pax["size"])
    if info.type in REGULAR and info.name.endswith("/"):
        info.type = tarfile.DIRTYPE
    return info
