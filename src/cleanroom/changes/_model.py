"""Typed values for workspace changes: one change, the set, and its summary for the record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.agent.filemessages import PathFacts

__all__ = ["KINDS", "ChangeSet", "ChangeSummary", "FileChange"]

KINDS = ("added", "modified", "deleted", "mode_changed")


@dataclass(frozen=True)
class FileChange(PathFacts):
    """One workspace path that differs from what was copied in, as the guest
    described it (:class:`~cleanroom.agent.filemessages.PathFacts`). ``blob`` is
    the host-private file holding a regular file's new content (None when no
    content came back: ``skipped`` says why).
    """

    skipped: str | None = None
    blob: Path | None = None

    @property
    def needs_content(self) -> bool:
        """Whether applying or diffing this change needs content that did not come back."""
        return self.type == "file" and self.change in ("added", "modified") and self.blob is None


@dataclass(frozen=True)
class ChangeSummary:
    """What the run record keeps: counts per kind, and paths up to a cap."""

    added: int
    modified: int
    deleted: int
    mode_changed: int
    skipped: int
    paths: tuple[tuple[str, str], ...]
    """(change, path) pairs, sorted by path, at most the cap."""
    paths_truncated: bool
    caps_hit: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "modified": self.modified,
            "deleted": self.deleted,
            "mode_changed": self.mode_changed,
            "skipped": self.skipped,
            "paths": [{"change": c, "path": p} for c, p in self.paths],
            "paths_truncated": self.paths_truncated,
            "caps_hit": list(self.caps_hit),
        }


@dataclass(frozen=True)
class ChangeSet:
    """Every change of one run, sorted by path; ``caps_hit`` names caps that cut the reply."""

    changes: tuple[FileChange, ...]
    caps_hit: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every change came back whole (no cap hit, no content missing)."""
        return not self.caps_hit and not any(
            c.needs_content or c.skipped is not None for c in self.changes
        )

    def summary(self, max_paths: int = 100) -> ChangeSummary:
        counts = dict.fromkeys(KINDS, 0)
        for c in self.changes:
            counts[c.change] += 1
        return ChangeSummary(
            added=counts["added"],
            modified=counts["modified"],
            deleted=counts["deleted"],
            mode_changed=counts["mode_changed"],
            skipped=sum(1 for c in self.changes if c.skipped is not None),
            paths=tuple((c.change, c.path) for c in self.changes[:max_paths]),
            paths_truncated=len(self.changes) > max_paths,
            caps_hit=self.caps_hit,
        )
