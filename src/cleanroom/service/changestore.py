"""A run's workspace changes at rest in its run directory, and what is done with them later.

Layout under ``<run_dir>/changes/``: the content blobs the guest sent
(``00000001``, ... private, written by ``collect_changes``), ``state.json``
(the change set, the manifest of what was copied in, and the host directory
it was copied from) and, once rendered, ``changes.patch`` (the git-format
binary patch). Everything here was validated when it arrived; the state file
is written by the service and parsed strictly when read back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.changes import (
    ApplyResult,
    ChangeSet,
    FileChange,
    HostManifest,
    apply_changes,
    render_patch,
)
from cleanroom.errors import CleanroomError, InvalidRequest

__all__ = [
    "CHANGES_DIR",
    "PATCH_NAME",
    "StoredChanges",
    "apply_stored",
    "load_changes",
    "render_stored",
    "save_changes",
]

CHANGES_DIR = "changes"
PATCH_NAME = "changes.patch"
_STATE = "state.json"
_FIELDS = ("path", "change", "type", "mode", "size", "sha256", "target", "skipped")


@dataclass(frozen=True)
class StoredChanges:
    """A run's change set, the manifest it is relative to, and the host directory."""

    changes: ChangeSet
    manifest: HostManifest
    source: Path


def _change_dict(change: FileChange) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(change, name) for name in _FIELDS}
    out["blob"] = None if change.blob is None else change.blob.name
    return out


def save_changes(run_dir: Path, stored: StoredChanges) -> None:
    """Write ``stored`` to ``run_dir/changes/state.json`` (the blobs are there already)."""
    state = {
        "source": str(stored.source),
        "caps_hit": list(stored.changes.caps_hit),
        "changes": [_change_dict(c) for c in stored.changes.changes],
        "manifest": json.loads(stored.manifest.to_json()),
    }
    directory = run_dir / CHANGES_DIR
    tmp = directory / (_STATE + ".tmp")
    tmp.write_text(json.dumps(state, separators=(",", ":")))
    tmp.replace(directory / _STATE)


def _blob(directory: Path, name: Any) -> Path | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.isdigit():
        raise ValueError("bad blob name")
    return directory / name


def load_changes(run_dir: Path) -> StoredChanges | None:
    """The stored changes of the run in ``run_dir`` (None: none were collected).

    Raises ``CleanroomError`` when the state file is unreadable or malformed.
    """
    directory = run_dir / CHANGES_DIR
    try:
        text = (directory / _STATE).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CleanroomError(f"cannot read the run's changes: {exc.strerror}") from exc
    try:
        state = json.loads(text)
        changes = tuple(
            FileChange(
                path=str(item["path"]),
                change=str(item["change"]),
                type=str(item["type"]),
                mode=item["mode"],
                size=item["size"],
                sha256=item["sha256"],
                target=item["target"],
                skipped=item["skipped"],
                blob=_blob(directory, item["blob"]),
            )
            for item in state["changes"]
        )
        manifest = HostManifest.from_json(json.dumps(state["manifest"]))
        return StoredChanges(
            ChangeSet(changes, tuple(str(c) for c in state["caps_hit"])),
            manifest,
            Path(str(state["source"])),
        )
    except (ValueError, KeyError, TypeError, InvalidRequest) as exc:
        raise CleanroomError(f"the run's stored changes are malformed: {exc}") from exc


def render_stored(run_dir: Path, stored: StoredChanges) -> Path:
    """Render the patch of ``stored`` into ``run_dir/changes/changes.patch``; its path.

    Raises like :func:`cleanroom.changes.render_patch` (``InvalidRequest`` for an
    incomplete change set, ``WorkspaceConflict`` when the host's base changed).
    """
    patch = render_patch(stored.changes, stored.source, stored.manifest)
    path = run_dir / CHANGES_DIR / PATCH_NAME
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(patch)
    tmp.replace(path)
    return path


def apply_stored(stored: StoredChanges) -> ApplyResult:
    """Apply ``stored`` to the host directory it was copied from (see ``apply_changes``)."""
    return apply_changes(stored.changes, stored.source, stored.manifest)
