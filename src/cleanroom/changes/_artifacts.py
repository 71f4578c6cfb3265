"""Artifacts: workspace files matching globs, copied out of the guest into a host directory.

Only regular files come back (the guest walks without following symlinks).
Each is written under the destination at its validated relative path,
directories created as needed and opened with ``O_NOFOLLOW``, the file
created with ``O_EXCL | O_NOFOLLOW`` (never overwriting, never through a
symlink), mode 0o644 (0o755 if the guest's copy was executable). Content is
checked against the size and sha256 the guest announced; on any failure what
was written is removed and ``GuestAgentFailed`` raised.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.agent.errors import AgentProtocolError
from cleanroom.agent.filemessages import FileEntry, FileLimits, check_rel_path
from cleanroom.agent.host import AgentClient
from cleanroom.changes._paths import NEW_FILE_FLAGS, open_parent, split
from cleanroom.changes._receive import Receiver
from cleanroom.errors import GuestAgentFailed, InvalidRequest

__all__ = ["Artifact", "ArtifactList", "collect_artifacts"]


@dataclass(frozen=True)
class Artifact:
    """One file copied out: relative path, size, sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ArtifactList:
    """What came back: the files, the matches left out (path, reason), caps that were hit."""

    artifacts: tuple[Artifact, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    caps_hit: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifacts": [
                {"path": a.path, "size": a.size, "sha256": a.sha256} for a in self.artifacts
            ],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "caps_hit": list(self.caps_hit),
        }


async def collect_artifacts(
    client: AgentClient,
    patterns: Sequence[str],
    dest: Path,
    limits: FileLimits | None = None,
) -> ArtifactList:
    """Copy the guest workspace's files matching ``patterns`` into ``dest`` (created).

    A pattern that matches nothing contributes nothing (no error). Raises
    ``InvalidRequest`` for a pattern that is not a relative normalized glob,
    ``GuestAgentFailed`` for anything invalid the guest sends.
    """
    for pattern in patterns:
        try:
            check_rel_path(pattern, "artifact pattern")
        except AgentProtocolError as exc:
            raise InvalidRequest(exc.message, details={"pattern": pattern}) from exc
    os.makedirs(dest, mode=0o755, exist_ok=True)  # noqa: PTH103 -- local disk, once

    def open_blob(entry: FileEntry) -> tuple[int, Path]:
        mode = 0o755 if (entry.mode or 0) & 0o111 else 0o644
        with open_parent(dest, entry.path, create=True) as dfd:
            fd = os.open(split(entry.path)[1], NEW_FILE_FLAGS, mode, dir_fd=dfd)
        return fd, dest / entry.path

    receiver = Receiver(open_blob)
    try:
        done = await client.artifacts(
            list(patterns), limits or FileLimits(), on_entry=receiver.on_entry,
            on_data=receiver.on_data,
        )  # fmt: skip
        received = receiver.finish()
    except BaseException:
        receiver.discard()
        raise
    found: list[Artifact] = []
    skipped: list[tuple[str, str]] = []
    for r in received:
        entry = r.entry
        if entry.change != "artifact":
            receiver.discard()
            raise GuestAgentFailed("a change entry in an artifacts reply")
        if r.blob is not None:
            assert entry.size is not None
            assert entry.sha256 is not None
            found.append(Artifact(entry.path, entry.size, entry.sha256))
        else:
            skipped.append((entry.path, entry.skipped or "unreadable"))
    return ArtifactList(tuple(found), tuple(skipped), done.caps_hit)
