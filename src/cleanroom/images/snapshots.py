"""Guest snapshots cached with their image: ``<image dir>/snapshots/<key>/``.

A snapshot is whatever a VMM needs to resume a booted, agent-ready guest of an
image: files (a memory and device state stream, the root-disk state it
depends on) plus ``snapshot.json``. Its *key* is the sha256 of the facts that
make it usable (image digest, agent and kernel versions, VMM version, guest
shape and the exact device set): a change of any of them is a different key,
so a stale snapshot is never found, only left behind (``prune``).

Verification, and why it is split: every file's sha256 is recorded at
publication and recomputed the first time this process uses the snapshot
(about 0.3 s for a 100 MB stream here: once, not per run); the file's identity
(inode, size, mtime in ns) is remembered with that verdict, and each later use
only compares it with a fresh ``stat`` (microseconds). A file replaced or
rewritten in place changes that identity and is hashed again before use.

Publication is atomic: files are made in a private ``.tmp-<pid>-*`` directory
beside the snapshots, then renamed to ``<key>``; a reader never sees half a
snapshot.

Several servers may share one image cache with different guest shapes or
settings (so different keys): pruning after a publication keeps the most
recently used snapshots (``find`` marks a use on the manifest's mtime) up to
a bound, not only the caller's own, and never removes the staging directory of
a process that is still alive; otherwise two such servers would delete each
other's snapshots, and each other's half-made ones, in turn.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cleanroom.images.manifest import file_sha256

__all__ = [
    "KEPT_PER_IMAGE",
    "SNAPSHOTS_DIR_NAME",
    "SNAPSHOT_MANIFEST_NAME",
    "Snapshot",
    "SnapshotCache",
    "SnapshotInvalid",
    "snapshot_key",
]

SNAPSHOTS_DIR_NAME = "snapshots"
SNAPSHOT_MANIFEST_NAME = "snapshot.json"
_FORMAT = 1
_TMP_PREFIX = ".tmp-"
KEPT_PER_IMAGE = 4
"""How many snapshots of one image pruning leaves (the caller's own first)."""
_ORPHAN_SECONDS = 86400.0
"""A staging directory whose maker is unknown (older releases) is left alone
for this long."""
_MAX_MANIFEST_BYTES = 1 << 20

Facts = Mapping[str, str | int | bool | None]
"""What a snapshot depends on, as flat JSON scalars (its key is their hash)."""


class SnapshotInvalid(Exception):
    """A snapshot is missing, damaged or does not match its manifest (``reason`` says how)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def snapshot_key(facts: Facts) -> str:
    """The hex sha256 of ``facts`` in canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(
        {"format": _FORMAT, **facts}, sort_keys=True, separators=(",", ":")
    ).encode()
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class FileSeal:
    """One snapshot file as published: its size and sha256."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Snapshot:
    """A published snapshot: its directory, facts, and files (name -> seal)."""

    key: str
    path: Path
    facts: Mapping[str, Any]
    files: Mapping[str, FileSeal]
    created_at: str

    def file(self, name: str) -> Path:
        """The path of one of its files."""
        return self.path / name

    @property
    def bytes(self) -> int:
        """Total size of its files (the host disk it takes, before sparseness)."""
        return sum(seal.size for seal in self.files.values())


_Identity = tuple[int, int, int, int]
"""``(st_dev, st_ino, st_size, st_mtime_ns)`` of a file."""


def _identity(path: Path) -> _Identity:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class SnapshotCache:
    """The snapshots of one image, under ``root`` (``<image dir>/snapshots``).

    One instance per process and image: it remembers which files it has hashed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._verified: dict[Path, _Identity] = {}

    def find(self, key: str) -> Snapshot:
        """The snapshot for ``key``, verified (see the module docstring).

        Raises ``SnapshotInvalid`` saying why it cannot be used: none was made,
        its manifest is unreadable, or a file is missing or changed.
        """
        path = self.root / key
        manifest = path / SNAPSHOT_MANIFEST_NAME
        if not manifest.is_file():
            raise SnapshotInvalid("no snapshot for this image and guest shape yet")
        snap = _load(path, key)
        for name, seal in snap.files.items():
            self._verify_file(snap.file(name), seal)
        with contextlib.suppress(OSError):  # a use, for pruning the least recent
            os.utime(manifest)
        return snap

    def _verify_file(self, path: Path, seal: FileSeal) -> None:
        try:
            ident = _identity(path)
        except OSError as exc:
            raise SnapshotInvalid(f"snapshot file {path.name} is missing") from exc
        if ident[2] != seal.size:
            raise SnapshotInvalid(f"snapshot file {path.name} has the wrong size")
        if self._verified.get(path) == ident:
            return
        try:
            digest = file_sha256(path)
        except OSError as exc:
            raise SnapshotInvalid(f"snapshot file {path.name} is unreadable: {exc}") from exc
        if digest != seal.sha256:
            raise SnapshotInvalid(f"snapshot file {path.name} does not match its sha256")
        self._verified[path] = ident

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private directory to make a snapshot's files in; removed on exit
        unless :meth:`publish` moved it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        # The pid in the name tells a pruning process whether its maker is alive.
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=self.root))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, staging: Path, key: str, facts: Facts, files: tuple[str, ...]) -> Snapshot:
        """Seal ``files`` (names inside ``staging``), write the manifest and move
        ``staging`` to ``<root>/<key>`` atomically, replacing any older one."""
        seals = {name: FileSeal((staging / name).stat().st_size, "") for name in files}
        for name in files:
            path = staging / name
            seals[name] = FileSeal(seals[name].size, file_sha256(path))
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        doc = {
            "format": _FORMAT,
            "key": key,
            "created_at": created_at,
            "facts": dict(facts),
            "files": {n: {"size": s.size, "sha256": s.sha256} for n, s in seals.items()},
        }
        (staging / SNAPSHOT_MANIFEST_NAME).write_text(json.dumps(doc, indent=2) + "\n")
        final = self.root / key
        if final.exists():
            old = self.root / f"{_TMP_PREFIX}{os.getpid()}-old-{key}"
            final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(final)
        snap = Snapshot(key, final, dict(facts), seals, created_at)
        for name in files:  # just hashed: no need to hash again on first use
            self._verified[snap.file(name)] = _identity(snap.file(name))
        return snap

    def prune(
        self, keep: str | Collection[str] | None = None, *, most: int | None = None
    ) -> list[str]:
        """Remove snapshots other than ``keep`` (one key or several), and staging
        directories left by processes that are gone; the snapshot keys removed.

        ``most``: keep up to that many snapshots in all, ``keep`` first and then
        the most recently used (other servers' shapes); None removes every other.
        """
        kept = {keep} if isinstance(keep, str) else set(keep or ())
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        others: list[tuple[float, Path]] = []
        for entry in self.root.iterdir():
            if entry.name.startswith(_TMP_PREFIX):
                if _abandoned(entry):
                    shutil.rmtree(entry, ignore_errors=True)
            elif entry.name not in kept and entry.is_dir():
                others.append((_last_use(entry), entry))
        room = 0 if most is None else max(0, most - len(kept))
        others.sort(key=lambda item: item[0], reverse=True)  # most recent first
        for _, entry in others[room:]:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        return sorted(removed)


def _last_use(path: Path) -> float:
    """When a snapshot was last found (its manifest's mtime; 0 when unreadable)."""
    try:
        return (path / SNAPSHOT_MANIFEST_NAME).stat().st_mtime
    except OSError:
        return 0.0


def _abandoned(staging: Path) -> bool:
    """Whether ``staging`` (``.tmp-<pid>-…``) belongs to a process that is gone;
    one without a pid (older releases) only once it is a day old."""
    pid = staging.name[len(_TMP_PREFIX) :].partition("-")[0]
    if pid.isdigit():
        return not Path(f"/proc/{pid}").exists()
    try:
        age = datetime.now(UTC).timestamp() - staging.stat().st_mtime
    except OSError:
        return False
    return age > _ORPHAN_SECONDS


def _load(path: Path, key: str) -> Snapshot:
    """Parse ``path``'s manifest strictly; ``SnapshotInvalid`` on any surprise."""
    manifest = path / SNAPSHOT_MANIFEST_NAME
    try:
        raw = manifest.read_bytes()[: _MAX_MANIFEST_BYTES + 1]
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise SnapshotInvalid("snapshot manifest is too large")
        doc = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise SnapshotInvalid(f"snapshot manifest is unreadable: {exc}") from exc
    try:
        if set(doc) != {"format", "key", "created_at", "facts", "files"}:
            raise SnapshotInvalid("snapshot manifest has unexpected keys")
        if doc["format"] != _FORMAT or doc["key"] != key:
            raise SnapshotInvalid("snapshot manifest is of another format or key")
        files = {
            str(name): FileSeal(int(entry["size"]), str(entry["sha256"]))
            for name, entry in doc["files"].items()
        }
        if not files or any("/" in n or n.startswith(".") for n in files):
            raise SnapshotInvalid("snapshot manifest lists bad file names")
        return Snapshot(key, path, dict(doc["facts"]), files, str(doc["created_at"]))
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise SnapshotInvalid(f"snapshot manifest is malformed: {exc}") from exc
