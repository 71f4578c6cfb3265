"""Receiving a CHANGES/ARTIFACTS reply on the host: validated entries, verified content.

Each entry's path is validated again here (normalized, relative, inside the
root); paths must be unique; the content of an entry goes into a descriptor
the caller's ``open_blob`` provides and is checked against the announced size
and sha256 when the next entry (or the end) arrives. Any breach raises
``GuestAgentFailed``; the caller then removes what it wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanroom.agent.filemessages import FileEntry
from cleanroom.changes._paths import guest_path
from cleanroom.errors import GuestAgentFailed

__all__ = ["Received", "Receiver"]

OpenBlob = Callable[[FileEntry], tuple[int, Path]]
"""Opens where an entry's content goes: (writable fd, its path)."""


@dataclass(frozen=True)
class Received:
    """One entry as received, with where its verified content now is."""

    entry: FileEntry
    blob: Path | None


@dataclass
class Receiver:
    """Callbacks for ``AgentClient.changes``/``artifacts``; :meth:`finish` when it returns."""

    open_blob: OpenBlob
    received: list[Received] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    _fd: int = -1
    _hash: Any = None
    _left: int = 0

    async def on_entry(self, entry: FileEntry) -> None:
        self._close_current()
        path = guest_path(entry.path)
        if path in self._seen:
            raise GuestAgentFailed(f"the guest sent {path!r} twice", details={"reason": "dup"})
        self._seen.add(path)
        blob = None
        if entry.content:
            assert entry.size is not None
            try:
                self._fd, blob = self.open_blob(entry)
            except OSError as exc:
                raise GuestAgentFailed(
                    f"cannot store {path!r} from the guest: {exc}",
                    details={"reason": "unwritable_path", "path": path},
                ) from exc
            self.written.append(blob)
            self._hash = hashlib.sha256()
            self._left = entry.size
        self.received.append(Received(entry, blob))

    async def on_data(self, chunk: bytes) -> None:
        if self._fd < 0 or len(chunk) > self._left:
            raise GuestAgentFailed("file data the guest did not announce")
        self._hash.update(chunk)
        self._left -= len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]

    def _close_current(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        os.close(fd)
        entry = self.received[-1].entry
        if self._left or self._hash.hexdigest() != entry.sha256:
            raise GuestAgentFailed(
                f"content of {entry.path!r} does not match its size or sha256",
                details={"reason": "content_mismatch", "path": entry.path},
            )

    def finish(self) -> list[Received]:
        """Verify the last content; the entries in the order received."""
        self._close_current()
        return self.received

    def discard(self) -> None:
        """Close and remove everything written (after a failure)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for path in self.written:
            with contextlib.suppress(OSError):
                path.unlink()
