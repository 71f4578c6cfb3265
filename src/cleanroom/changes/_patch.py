"""A git-format, binary-safe patch of a ChangeSet, made by real git.

The host writes two private trees from validated data only: ``a/`` holds the
old side of every changed path (from the host's original files, each checked
against the manifest hash taken at copy time), ``b/`` the new side (from the
verified contents the guest sent). ``git diff --no-index --binary --no-prefix``
between them, run with no user or system git configuration, gives ``a/PATH``
``b/PATH`` headers that ``git apply`` (and ``patch -p1`` for text) accept.
Directories carry no content in git and are not in the patch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cleanroom.changes._manifest import HostManifest, hash_file_at
from cleanroom.changes._model import ChangeSet, FileChange
from cleanroom.changes._paths import NEW_FILE_FLAGS, open_parent, split
from cleanroom.errors import CleanroomError, GuestAgentFailed, InvalidRequest, WorkspaceConflict

__all__ = ["render_patch"]

_GIT_TIMEOUT = 300.0


def _git_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C",
    }


def _copy_in(src_fd: int, tree: Path, path: str, mode: int) -> None:
    with open_parent(tree, path, create=True) as dfd:
        out = os.open(split(path)[1], NEW_FILE_FLAGS, 0o600, dir_fd=dfd)
        try:
            while chunk := os.read(src_fd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            os.fchmod(out, mode & 0o777)
        finally:
            os.close(out)


def _link_in(tree: Path, path: str, target: str) -> None:
    with open_parent(tree, path, create=True) as dfd:
        os.symlink(target, split(path)[1], dir_fd=dfd)


def _old_side(base: Path, manifest: HostManifest, change: FileChange, tree: Path) -> None:
    old = manifest.entries.get(change.path)
    if old is None or old.type == "dir":
        return
    if old.type == "symlink":
        assert old.target is not None
        _link_in(tree, change.path, old.target)
        return
    try:
        with open_parent(base, change.path) as dfd:
            name = split(change.path)[1]
            got = hash_file_at(dfd, name)
            if got is None or got[0] != old.sha256:
                raise WorkspaceConflict(
                    f"{change.path!r} changed on the host since the copy; no base for the diff",
                    details={"paths": [change.path]},
                )
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as exc:
        raise WorkspaceConflict(
            f"{change.path!r} is gone from the host since the copy: {exc}",
            details={"paths": [change.path]},
        ) from exc
    try:
        _copy_in(fd, tree, change.path, old.mode)
    finally:
        os.close(fd)


def _new_side(manifest: HostManifest, change: FileChange, a: Path, b: Path) -> None:
    if change.change == "deleted" or change.type not in ("file", "symlink"):
        return
    if change.type == "symlink":
        assert change.target is not None
        _link_in(b, change.path, change.target)
        return
    mode = change.mode if change.mode is not None else 0o644
    if change.blob is not None:
        fd = os.open(change.blob, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    elif change.change == "mode_changed" and manifest.entries.get(change.path) is not None:
        with open_parent(a, change.path) as dfd:  # same content as the old side
            fd = os.open(split(change.path)[1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
    else:
        return
    try:
        _copy_in(fd, b, change.path, mode)
    finally:
        os.close(fd)


def render_patch(changes: ChangeSet, base: Path, manifest: HostManifest) -> bytes:
    """The patch from ``base`` (the host tree as copied in) to the run's result.

    Raises ``WorkspaceConflict`` when a base file no longer matches the
    manifest, ``InvalidRequest`` when the change set is incomplete (a cap
    was hit or content is missing), ``CleanroomError`` if git fails.
    """
    if not changes.complete:
        raise InvalidRequest(
            "the change set is incomplete (a cap was hit or content is missing): no patch",
            details={"caps_hit": list(changes.caps_hit)},
        )
    work = Path(tempfile.mkdtemp(prefix="cleanroom-diff-"))
    try:
        a, b = work / "a", work / "b"
        a.mkdir()
        b.mkdir()
        try:
            for change in changes.changes:
                if change.change != "added":
                    _old_side(base, manifest, change, a)
            for change in changes.changes:
                _new_side(manifest, change, a, b)
        except OSError as exc:  # e.g. a path under a path that is a symlink or file
            raise GuestAgentFailed(
                f"the change set is inconsistent: {exc}", details={"reason": "inconsistent"}
            ) from exc
        try:
            proc = subprocess.run(
                ["git", "diff", "--no-index", "--binary", "--no-prefix", "--no-renames",
                 "--full-index", "--no-color", "--no-ext-diff", "--no-textconv", "a", "b"],
                cwd=work, env=_git_env(work), capture_output=True, timeout=_GIT_TIMEOUT,
                check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CleanroomError(f"git diff failed: {exc}") from exc
        if proc.returncode not in (0, 1):  # 1: differences found
            msg = proc.stderr.decode(errors="replace").strip()
            raise CleanroomError(f"git diff failed ({proc.returncode}): {msg}")
        return proc.stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)
