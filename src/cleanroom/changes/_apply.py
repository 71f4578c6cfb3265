"""Applying a ChangeSet to the host directory the workspace was copied from.

All or nothing with respect to conflicts: every changed path is first
checked against the manifest taken at copy time (a file must still have its
recorded content and mode, a symlink its target, a directory must still be a
directory; an added path must still be absent; a deleted directory must hold
nothing the manifest does not know). One mismatch and ``WorkspaceConflict``
is raised before anything is written. Then, per path, atomically: contents
go to a temporary file in the same directory (mode set on it) that is
renamed over the path (permission bits only: never setuid, setgid or
sticky); symlinks likewise; removals deepest first, creations
shallowest first. Nothing follows a symlink on the host: each directory is
opened relative to its parent with ``O_NOFOLLOW``. (A process changing the
host tree between the check and the writes is not guarded against.)
"""

# descriptor-relative calls (dir_fd, O_NOFOLLOW) are the point here
# ruff: noqa: PTH208
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cleanroom.changes._manifest import HostManifest, ManifestEntry, hash_file_at
from cleanroom.changes._model import ChangeSet, FileChange
from cleanroom.changes._paths import DIR_FLAGS, NEW_FILE_FLAGS, open_parent, split, symlink_escapes
from cleanroom.errors import CleanroomError, InvalidRequest, WorkspaceConflict

__all__ = ["ApplyResult", "apply_changes"]

_MAX_LISTED = 50


@dataclass(frozen=True)
class ApplyResult:
    """How many paths were written (created or replaced), removed and chmod-ed."""

    written: int
    removed: int
    chmodded: int


def _state(root: Path, path: str) -> ManifestEntry | None:
    """The host path now, as a manifest entry (None: absent). Never follows symlinks."""
    try:
        with open_parent(root, path) as dfd:
            name = split(path)[1]
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            mode = st.st_mode & 0o777
            if stat.S_ISDIR(st.st_mode):
                return ManifestEntry("dir", mode)
            if stat.S_ISLNK(st.st_mode):
                return ManifestEntry("symlink", mode, target=os.readlink(name, dir_fd=dfd))
            got = hash_file_at(dfd, name)
            if got is None:
                return ManifestEntry("special", mode)
            return ManifestEntry("file", got[2], got[1], got[0])
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return ManifestEntry("special", 0)  # a parent is no longer a directory
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return ManifestEntry("special", 0)  # a parent became a symlink
        raise


def _same(now: ManifestEntry | None, then: ManifestEntry | None) -> bool:
    if now is None or then is None:
        return now is then
    if now.type != then.type:
        return False
    if now.type == "file":
        return (now.sha256, now.mode) == (then.sha256, then.mode)
    if now.type == "symlink":
        return now.target == then.target
    return True  # a directory: its mode is not content


def _dir_extras(root: Path, path: str, manifest: HostManifest) -> bool:
    """Whether the host directory ``path`` holds names the manifest does not know."""
    with open_parent(root, path) as dfd:
        fd = os.open(split(path)[1], DIR_FLAGS, dir_fd=dfd)
        try:
            return any(f"{path}/{name}" not in manifest.entries for name in os.listdir(fd))
        finally:
            os.close(fd)


def _conflicts(changes: ChangeSet, root: Path, manifest: HostManifest) -> list[str]:
    bad: list[str] = []
    for change in changes.changes:
        then = manifest.entries.get(change.path)
        now = _state(root, change.path)
        if not _same(now, then) or (
            change.change == "deleted" and then is not None and then.type == "dir"
            and _dir_extras(root, change.path, manifest)
        ):  # fmt: skip
            bad.append(change.path)
    return bad


def _check_applicable(changes: ChangeSet) -> None:
    if not changes.complete:
        raise InvalidRequest(
            "the change set is incomplete (a cap was hit or content is missing): not applied",
            details={"caps_hit": list(changes.caps_hit)},
        )
    for change in changes.changes:
        if change.type == "special" and change.change != "deleted":
            raise InvalidRequest(f"{change.path!r} is a special file: not applied")
        if (
            change.type == "symlink"
            and change.target is not None
            and symlink_escapes(change.path, change.target)
        ):
            raise InvalidRequest(
                f"symlink {change.path!r} points outside the workspace: not applied",
                details={"paths": [change.path]},
            )


def _remove(root: Path, change: FileChange, old: ManifestEntry) -> None:
    with open_parent(root, change.path) as dfd:
        name = split(change.path)[1]
        if old.type == "dir":
            os.rmdir(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)


def _tmp_name(name: str) -> str:
    return f".{name[:200]}.cleanroom-{secrets.token_hex(6)}"


def _write(root: Path, change: FileChange) -> None:
    with open_parent(root, change.path, create=True) as dfd:
        name = split(change.path)[1]
        # Permission bits only: a run never makes a host file setuid, setgid or sticky.
        mode = (change.mode if change.mode is not None else 0o644) & 0o777
        if change.type == "dir":
            with contextlib.suppress(FileExistsError):  # made already as a parent
                os.mkdir(name, 0o700, dir_fd=dfd)
            fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            return
        tmp = _tmp_name(name)
        try:
            if change.type == "symlink":
                assert change.target is not None
                os.symlink(change.target, tmp, dir_fd=dfd)
            else:
                assert change.blob is not None
                _copy_blob(change.blob, dfd, tmp, mode)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def _copy_blob(blob: Path, dfd: int, tmp: str, mode: int) -> None:
    src = os.open(blob, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        out = os.open(tmp, NEW_FILE_FLAGS, 0o600, dir_fd=dfd)
        try:
            while chunk := os.read(src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            os.fchmod(out, mode)
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(src)


def _chmod(root: Path, change: FileChange) -> None:
    assert change.mode is not None
    with open_parent(root, change.path) as dfd:
        flags = (DIR_FLAGS if change.type == "dir" else os.O_RDONLY | os.O_NOFOLLOW) | os.O_CLOEXEC
        fd = os.open(split(change.path)[1], flags | os.O_NONBLOCK, dir_fd=dfd)
        try:
            os.fchmod(fd, change.mode & 0o777)
        finally:
            os.close(fd)


def apply_changes(changes: ChangeSet, root: Path, manifest: HostManifest) -> ApplyResult:
    """Apply ``changes`` to ``root`` (the host directory as copied, per ``manifest``).

    Raises ``WorkspaceConflict`` (nothing written) when a changed host path
    was modified since the copy; ``InvalidRequest`` (nothing written) for an
    incomplete change set, a special file or a symlink leaving the workspace;
    ``CleanroomError`` if a write fails midway.
    """
    _check_applicable(changes)
    try:
        bad = _conflicts(changes, root, manifest)
    except OSError as exc:
        raise CleanroomError(f"cannot check {root} for conflicts: {exc}") from exc
    if bad:
        raise WorkspaceConflict(
            f"{len(bad)} changed path(s) were also modified on the host since the copy",
            details={"paths": bad[:_MAX_LISTED], "count": len(bad)},
        )
    removals: list[tuple[FileChange, ManifestEntry]] = []
    writes: list[FileChange] = []
    chmods: list[FileChange] = []
    for change in changes.changes:
        old = manifest.entries.get(change.path)
        if change.change == "mode_changed":
            chmods.append(change)
            continue
        # A directory cannot be renamed over, nor replace a file by rename: remove first.
        retyped = old is not None and old.type != change.type and "dir" in (old.type, change.type)
        if old is not None and (change.change == "deleted" or retyped):
            removals.append((change, old))
        if change.change != "deleted":
            writes.append(change)
    try:
        for change, old in sorted(removals, key=lambda r: r[0].path.count("/"), reverse=True):
            _remove(root, change, old)
        for change in sorted(writes, key=lambda c: c.path.count("/")):
            _write(root, change)
        for change in chmods:
            _chmod(root, change)
    except OSError as exc:
        raise CleanroomError(f"applying the changes to {root} failed: {exc}") from exc
    return ApplyResult(len(writes), len(removals), len(chmods))
