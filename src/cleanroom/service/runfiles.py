"""What a finished run left in its run directory, served back: its patch, its
artifacts, and its changes applied to the host directory it came from.

Only what the service itself recorded is served: the patch it rendered, the
artifact paths listed in the run's record (each a validated relative path
of a regular file the service wrote, opened again without following
symlinks).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from cleanroom.errors import CleanroomError, InvalidRequest, NotFound, error_class_for_code
from cleanroom.models import Applied
from cleanroom.service.changestore import CHANGES_DIR, PATCH_NAME, apply_stored, load_changes
from cleanroom.service.run.results import ARTIFACTS_DIR

__all__ = ["apply_run", "artifact_path", "run_patch"]


def run_patch(run_dir: Path, record: dict[str, Any]) -> bytes:
    """The run's git-format patch (empty when nothing changed).

    Raises ``InvalidRequest`` for a run without collected changes (read-only
    workspace, or collection failed) or with an incomplete change set, and
    the error that kept the patch from being rendered (e.g. ``workspace_conflict``).
    """
    changes = record.get("changes")
    if not isinstance(changes, dict):
        raise InvalidRequest(
            "the run has no workspace changes (read-only workspace, or it did not finish)",
            details={"run_id": record.get("run_id")},
        )
    error = changes.get("error") or changes.get("patch_error")
    if isinstance(error, dict):
        cls = error_class_for_code(str(error.get("code")))
        raise cls(f"no patch for this run: {error.get('message')}")
    if not changes.get("complete", False):
        raise InvalidRequest(
            "the change set is incomplete (a cap was hit or content is missing): no patch",
            details={"caps_hit": changes.get("caps_hit", [])},
        )
    if changes.get("patch") is None:
        return b""
    try:
        return (run_dir / CHANGES_DIR / PATCH_NAME).read_bytes()
    except OSError as exc:
        raise CleanroomError(f"cannot read the run's patch: {exc.strerror}") from exc


def apply_run(run_dir: Path) -> Applied:
    """Apply the run's changes to the host directory its workspace was copied from.

    Raises ``InvalidRequest`` (no changes collected, incomplete set, ...) or
    ``WorkspaceConflict`` (a changed host path was modified since the copy;
    nothing is written).
    """
    stored = load_changes(run_dir)
    if stored is None:
        raise InvalidRequest(
            "the run has no workspace changes to apply (read-only workspace, or none collected)"
        )
    result = apply_stored(stored)
    return Applied(result.written, result.removed, result.chmodded)


def _listed(record: dict[str, Any]) -> set[str]:
    listing = record.get("workspace_artifacts")
    if not isinstance(listing, dict):
        return set()
    items = listing.get("artifacts")
    return {str(a.get("path")) for a in items if isinstance(a, dict)} if items else set()


def artifact_path(run_dir: Path, record: dict[str, Any], path: str) -> Path:
    """The file of the run's artifact ``path`` (as listed in its record).

    Raises ``InvalidRequest`` for a path that is not normalized and relative,
    ``NotFound`` for one the run did not keep.
    """
    parts = path.split("/")
    if (
        not path
        or "\x00" in path
        or path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InvalidRequest("artifact paths are relative, normalized paths", details={})
    if path not in _listed(record):
        raise NotFound(f"the run kept no artifact {path!r}", details={"path": path})
    root = run_dir / ARTIFACTS_DIR
    full = root.joinpath(*parts)
    try:
        st = os.lstat(full)
        inside = full.resolve().is_relative_to(root.resolve())
    except OSError as exc:
        raise NotFound(f"the run's artifact {path!r} is gone", details={"path": path}) from exc
    if not stat.S_ISREG(st.st_mode) or not inside:
        raise NotFound(f"the run's artifact {path!r} is gone", details={"path": path})
    return full
