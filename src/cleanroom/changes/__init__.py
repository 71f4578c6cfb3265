"""Workspace changes coming back from a run (host side).

The guest agent reports what differs from the workspace it received; this
package receives and validates that (:func:`collect_changes`), summarizes it
for the run record (:meth:`ChangeSet.summary`), renders a git-format binary
patch (:func:`render_patch`) and applies it to the host directory with
conflict checks (:func:`apply_changes`). The base of all three is the
:class:`HostManifest` taken on the host when the workspace was copied
(:func:`manifest_from_archive` or :func:`take_manifest`).
:func:`collect_artifacts` copies files matching globs out of the workspace
into a host directory.
"""

from __future__ import annotations

from cleanroom.agent.filemessages import FileLimits
from cleanroom.changes._apply import ApplyResult, apply_changes
from cleanroom.changes._artifacts import Artifact, ArtifactList, collect_artifacts
from cleanroom.changes._collect import collect_changes
from cleanroom.changes._manifest import (
    HostManifest,
    ManifestEntry,
    manifest_from_archive,
    take_manifest,
)
from cleanroom.changes._model import ChangeSet, ChangeSummary, FileChange
from cleanroom.changes._patch import render_patch

__all__ = [
    "ApplyResult",
    "Artifact",
    "ArtifactList",
    "ChangeSet",
    "ChangeSummary",
    "FileChange",
    "FileLimits",
    "HostManifest",
    "ManifestEntry",
    "apply_changes",
    "collect_artifacts",
    "collect_changes",
    "manifest_from_archive",
    "render_patch",
    "take_manifest",
]
