"""Collecting a run's workspace changes from the guest agent into a ChangeSet."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

from cleanroom.agent.filemessages import FileEntry, FileLimits, PathFacts
from cleanroom.agent.host import AgentClient
from cleanroom.changes._manifest import HostManifest
from cleanroom.changes._model import ChangeSet, FileChange
from cleanroom.changes._paths import NEW_FILE_FLAGS
from cleanroom.changes._receive import Receiver
from cleanroom.errors import GuestAgentFailed

__all__ = ["collect_changes"]

_FACTS = tuple(f.name for f in dataclasses.fields(PathFacts))


async def collect_changes(
    client: AgentClient, spool: Path, manifest: HostManifest, limits: FileLimits | None = None
) -> ChangeSet:
    """Ask the guest what changed in its workspace; contents go into ``spool`` (created, private).

    ``manifest`` is the host's record of what was copied in: a change the
    guest reports that matches it (a file rewritten with its old content) is
    dropped, one it cannot know (deleting a path never copied) likewise.
    Raises ``GuestAgentFailed`` for anything invalid the guest sends, and
    lets ``AgentError`` from the channel through; ``spool`` is removed on failure.
    """
    os.mkdir(spool, 0o700)  # noqa: PTH102 -- local disk, once
    counter = iter(range(1, 1 << 62))

    def open_blob(entry: FileEntry) -> tuple[int, Path]:
        path = spool / f"{next(counter):08d}"
        return os.open(path, NEW_FILE_FLAGS, 0o600), path

    receiver = Receiver(open_blob)
    try:
        done = await client.changes(
            limits or FileLimits(), on_entry=receiver.on_entry, on_data=receiver.on_data
        )
        received = receiver.finish()
        changes = [
            c for r in received if (c := _reconcile(_change(r.entry, r.blob), manifest)) is not None
        ]
    except BaseException:
        receiver.discard()
        shutil.rmtree(spool, ignore_errors=True)
        raise
    changes.sort(key=lambda c: c.path)
    return ChangeSet(tuple(changes), done.caps_hit)


def _change(entry: FileEntry, blob: Path | None) -> FileChange:
    if entry.change == "artifact":
        raise GuestAgentFailed("an artifact entry in a changes reply")
    # A change keeps the facts the guest sent, field for field (PathFacts).
    facts = {name: getattr(entry, name) for name in _FACTS}
    return FileChange(**facts, skipped=entry.skipped, blob=blob)


def _drop_blob(change: FileChange) -> None:
    if change.blob is not None:
        with contextlib.suppress(OSError):
            change.blob.unlink()


def _reconcile(change: FileChange, manifest: HostManifest) -> FileChange | None:
    """``change`` seen against the host's manifest (None: no change after all)."""
    old = manifest.entries.get(change.path)
    if change.change == "deleted":
        return change if old is not None else None
    if old is None:
        return dataclasses.replace(change, change="added")
    same_content = (
        change.type == old.type
        and (change.type != "file" or (change.sha256 is not None and change.sha256 == old.sha256))
        and (change.type != "symlink" or change.target == old.target)
    )
    if change.type == "file" and change.sha256 is None:
        same_content = False  # content not sent (skipped): cannot tell, keep as reported
    if not same_content:
        return change
    _drop_blob(change)
    if change.mode == old.mode or change.type == "symlink":
        return None
    return dataclasses.replace(change, change="mode_changed", blob=None)
