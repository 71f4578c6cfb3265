"""Messages of the files coming back from the guest: CHANGES, ARTIFACTS and their replies.

Stdlib only: this module runs inside the guest. Same strict JSON rules as
:mod:`cleanroom.agent.messages` (exact keys, checked types), plus bounds on
every count, size and path: paths are normalized relative paths
(:func:`check_rel_path`), sizes and caps are bounded, and the fields of a
FILE_ENTRY must agree with each other (content only for a regular file with
size and sha256, a target only on a symlink, ...).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, fields

from cleanroom.agent.errors import AgentProtocolError
from cleanroom.agent.jsonwire import as_object, dump, get, load, opt
from cleanroom.agent.protocol import Frame, FrameType

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "CAP_NAMES",
    "CHANGE_KINDS",
    "FILE_TYPES",
    "MAX_PATH",
    "SKIP_REASONS",
    "ArtifactsRequest",
    "ChangesRequest",
    "FileEntry",
    "FileLimits",
    "FileReply",
    "FilesDone",
    "PathFacts",
    "check_rel_path",
    "parse_artifacts",
    "parse_changes",
    "parse_file_entry",
    "parse_files_done",
]


MAX_PATH = 4096
"""Longest relative path (or symlink target) a FILE_ENTRY may carry, in UTF-8 bytes."""
MAX_NAME = 255
"""Longest path component."""
MAX_COUNT = 1_000_000
"""Largest file-count cap a request may ask for."""
MAX_BYTES = 1 << 50
"""Largest byte cap (and file size) a message may carry."""
MAX_PATTERNS = 64
"""Most glob patterns one ARTIFACTS request may carry."""

CHANGE_KINDS = frozenset({"added", "modified", "deleted", "mode_changed", "artifact"})
FILE_TYPES = frozenset({"file", "dir", "symlink", "special"})
SKIP_REASONS = frozenset({"special", "too_large", "total_bytes", "unreadable"})
_CAP_TOPS = {"max_files": MAX_COUNT, "max_file_bytes": MAX_BYTES, "max_total_bytes": MAX_BYTES}
"""Each cap of a request, with the largest value it may ask for."""
CAP_NAMES = frozenset(_CAP_TOPS)


def check_rel_path(path: str, what: str) -> str:
    """``path`` if it is a normalized relative path inside its root; else AgentProtocolError.

    Normalized: no leading ``/``, no empty, ``.`` or ``..`` component, no NUL,
    at most :data:`MAX_PATH` bytes and :data:`MAX_NAME` per component.
    """
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise AgentProtocolError(f"{what}: path is not valid UTF-8") from None
    if not path or size > MAX_PATH or "\0" in path or path.startswith("/"):
        raise AgentProtocolError(f"{what}: path must be relative, 1..{MAX_PATH} bytes, no NUL")
    for part in path.split("/"):
        if part in ("", ".", "..") or len(part.encode("utf-8")) > MAX_NAME:
            raise AgentProtocolError(f"{what}: path {path!r} is not normalized")
    return path


def _count(obj: dict[str, Any], key: str, what: str, top: int) -> int:
    value = get(obj, key, int, what)
    if not 0 <= value <= top:
        raise AgentProtocolError(f"{what}: {key} must be 0..{top}")
    return value


@dataclass(frozen=True)
class FileLimits:
    """Caps on what a CHANGES or ARTIFACTS reply may carry."""

    max_files: int = 1000
    max_file_bytes: int = 64 << 20
    max_total_bytes: int = 256 << 20


def _limits(obj: dict[str, Any], what: str) -> FileLimits:
    return FileLimits(**{key: _count(obj, key, what, top) for key, top in _CAP_TOPS.items()})


@dataclass(frozen=True)
class ChangesRequest:
    """Report the workspace's changes since the recorded manifest, with contents."""

    limits: FileLimits

    def to_frame(self) -> bytes:
        return dump(FrameType.CHANGES, as_object(self.limits))


def parse_changes(payload: bytes) -> ChangesRequest:
    w = "changes"
    return ChangesRequest(_limits(load(payload, w, CAP_NAMES), w))


@dataclass(frozen=True)
class ArtifactsRequest:
    """Send the workspace's regular files matching any of ``patterns``.

    Patterns are relative globs (``*`` and ``?`` stay within one component,
    ``**`` spans directories), matched against normalized workspace paths.
    """

    patterns: tuple[str, ...]
    limits: FileLimits

    def to_frame(self) -> bytes:
        return dump(
            FrameType.ARTIFACTS, {"patterns": list(self.patterns), **as_object(self.limits)}
        )


def parse_artifacts(payload: bytes) -> ArtifactsRequest:
    w = "artifacts"
    obj = load(payload, w, CAP_NAMES | {"patterns"})
    patterns = get(obj, "patterns", list, w)
    if len(patterns) > MAX_PATTERNS or not all(isinstance(p, str) for p in patterns):
        raise AgentProtocolError(f"{w}: patterns must be at most {MAX_PATTERNS} strings")
    return ArtifactsRequest(tuple(check_rel_path(p, w) for p in patterns), _limits(obj, w))


@dataclass(frozen=True)
class PathFacts:
    """What the guest says of one path: which (``path``), how it changed
    (``change``), and what it is now (``type``/``mode``/``size``/``sha256``/
    ``target``; for ``deleted``, the type it had). ``mode`` is the permission
    bits (0o7777 part) where the path exists; ``target`` is a symlink's target.

    The fields :class:`FileEntry` carries and the host's record of a change keeps.
    """

    path: str
    change: str
    type: str
    mode: int | None = None
    size: int | None = None
    sha256: str | None = None
    target: str | None = None


@dataclass(frozen=True)
class FileEntry(PathFacts):
    """One path in a CHANGES/ARTIFACTS reply: its :class:`PathFacts`, then these.

    ``content``: exactly ``size`` bytes of the file follow in FILE_DATA frames
    (regular files only; their sha256 is ``sha256``). ``skipped`` says why an
    existing file's content is not sent (``special``: device, fifo or socket;
    ``too_large``: over ``max_file_bytes``; ``total_bytes``: over
    ``max_total_bytes``; ``unreadable``).
    """

    content: bool = False
    skipped: str | None = None

    def to_frame(self) -> builtins.bytes:
        return dump(FrameType.FILE_ENTRY, as_object(self))


_ENTRY_KEYS = frozenset(f.name for f in fields(FileEntry))
_HEX = frozenset("0123456789abcdef")


def parse_file_entry(payload: bytes) -> FileEntry:
    """Strict: besides keys and types, the combination of fields must make sense."""
    w = "file_entry"
    obj = load(payload, w, _ENTRY_KEYS)
    path = check_rel_path(get(obj, "path", str, w), w)
    change, ftype = get(obj, "change", str, w), get(obj, "type", str, w)
    if change not in CHANGE_KINDS or ftype not in FILE_TYPES:
        raise AgentProtocolError(f"{w}: unknown change {change!r} or type {ftype!r}")
    mode = opt(obj, "mode", int, w)
    if mode is not None and not 0 <= mode <= 0o7777:
        raise AgentProtocolError(f"{w}: mode out of range")
    size = opt(obj, "size", int, w)
    if size is not None and not 0 <= size <= MAX_BYTES:
        raise AgentProtocolError(f"{w}: size out of range")
    digest = opt(obj, "sha256", str, w)
    if digest is not None and (len(digest) != 64 or not set(digest) <= _HEX):
        raise AgentProtocolError(f"{w}: sha256 must be 64 lowercase hex digits")
    target = opt(obj, "target", str, w)
    if target is not None and (
        not target or "\0" in target or len(target.encode("utf-8", "replace")) > MAX_PATH
    ):
        raise AgentProtocolError(f"{w}: symlink target must be 1..{MAX_PATH} bytes, no NUL")
    content = get(obj, "content", bool, w)
    skipped = opt(obj, "skipped", str, w)
    if skipped is not None and skipped not in SKIP_REASONS:
        raise AgentProtocolError(f"{w}: unknown skip reason {skipped!r}")
    exists = change != "deleted"
    if content and (ftype != "file" or size is None or digest is None or skipped is not None):
        raise AgentProtocolError(f"{w}: content only for a regular file with size and sha256")
    if (target is not None) != (ftype == "symlink" and exists):
        raise AgentProtocolError(f"{w}: a target goes with an existing symlink, and only there")
    if exists and mode is None:
        raise AgentProtocolError(f"{w}: an existing path needs its mode")
    if change == "artifact" and not (ftype == "file" and (content or skipped is not None)):
        raise AgentProtocolError(f"{w}: artifacts are regular files, sent or skipped")
    return FileEntry(path, change, ftype, mode, size, digest, target, content, skipped)


@dataclass(frozen=True)
class FilesDone:
    """End of a CHANGES/ARTIFACTS reply: entries and content bytes sent, caps that were hit."""

    entries: int
    bytes: int
    caps_hit: tuple[str, ...] = ()

    def to_frame(self) -> builtins.bytes:
        return dump(
            FrameType.FILES_DONE,
            {"entries": self.entries, "bytes": self.bytes, "caps_hit": list(self.caps_hit)},
        )


def parse_files_done(payload: bytes) -> FilesDone:
    w = "files_done"
    obj = load(payload, w, frozenset({"entries", "bytes", "caps_hit"}))
    caps = get(obj, "caps_hit", list, w)
    if not all(isinstance(c, str) and c in CAP_NAMES for c in caps) or len(set(caps)) != len(caps):
        raise AgentProtocolError(f"{w}: caps_hit must list distinct cap names")
    return FilesDone(
        _count(obj, "entries", w, MAX_COUNT), _count(obj, "bytes", w, MAX_BYTES), tuple(caps)
    )


class FileReply:
    """Sans-IO check of one CHANGES/ARTIFACTS reply against its request's ``limits``.

    :meth:`feed` each FILE_ENTRY/FILE_DATA/FILES_DONE frame in order; it
    returns the parsed entry, the data chunk, or the final FilesDone, and
    raises AgentProtocolError when the guest breaks the rules: content longer
    or shorter than announced, data nobody announced, more entries or bytes
    than the caps allow, a FILES_DONE whose counts differ from what came.
    """

    def __init__(self, limits: FileLimits) -> None:
        self._limits = limits
        self._entries = 0
        self._bytes = 0
        self._pending = 0  # content bytes still owed by the last entry

    def feed(self, frame: Frame) -> FileEntry | builtins.bytes | FilesDone:
        if frame.type is FrameType.FILE_DATA:
            if len(frame.payload) > self._pending:
                raise AgentProtocolError("file data beyond the announced size")
            self._pending -= len(frame.payload)
            return frame.payload
        if self._pending:
            raise AgentProtocolError(f"file content short by {self._pending} bytes")
        if frame.type is FrameType.FILES_DONE:
            done = parse_files_done(frame.payload)
            if (done.entries, done.bytes) != (self._entries, self._bytes):
                raise AgentProtocolError("files_done does not match what was sent")
            return done
        if frame.type is not FrameType.FILE_ENTRY:
            raise AgentProtocolError(f"unexpected {frame.type.name} in a files reply")
        entry = parse_file_entry(frame.payload)
        self._entries += 1
        if self._entries > self._limits.max_files:
            raise AgentProtocolError(f"more than {self._limits.max_files} entries")
        if entry.content:
            assert entry.size is not None  # parse_file_entry guarantees it
            self._pending = entry.size
            self._bytes += entry.size
            if (
                entry.size > self._limits.max_file_bytes
                or self._bytes > self._limits.max_total_bytes
            ):
                raise AgentProtocolError("file content beyond the requested caps")
        return entry
