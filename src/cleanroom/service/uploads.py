"""Uploaded workspaces: received as a tar stream, kept briefly, used once.

A client that is not on the server's machine sends its directory as a tar
stream (``POST /v1/workspaces``); it is extracted strictly (see
:mod:`cleanroom.service.upload_tar`) into a private directory under the state
directory's ``uploads/`` and given an id. A launch (or exec) naming that id
*claims* it: from then on the context owns the tree (its runs copy it into
their guests, its policy was read from it) and removes it once the context
is terminated and its runs are finalized. An upload nobody claims is removed
after ``limits.upload_ttl_seconds``; the server's start and stop remove every one.

A body that arrives too slowly is cut off with ``upload_timeout`` (see
:mod:`cleanroom.service.upload_pace`): at most :data:`MAX_PENDING_UPLOADS`
uploads are received or kept at once, so a slow client must not keep its slot.
Whatever way an upload fails, its partial tree is removed and its slot freed.

The stream is pulled chunk by chunk from the request body by the extracting
thread (through the event loop), so neither side ever holds it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from cleanroom.config_limits import LimitsConfig
from cleanroom.errors import CapacityExhausted, WorkspaceInvalid
from cleanroom.service.upload_pace import UploadPace, paced
from cleanroom.service.upload_tar import UploadLimits, UploadStats, extract_upload

__all__ = ["MAX_PENDING_UPLOADS", "UPLOAD_TTL_SECONDS", "Upload", "Uploads"]

UPLOAD_TTL_SECONDS = LimitsConfig.upload_ttl_seconds
"""How long an unclaimed upload is kept (by default; ``limits.upload_ttl_seconds``)."""
MAX_PENDING_UPLOADS = 16
"""Uploads being received or waiting to be claimed, at most."""
_ID_PREFIX = "ws-"

log = structlog.get_logger("cleanroom.uploads")


@dataclass(frozen=True)
class Upload:
    """A received workspace: its id, where its tree is, what is in it."""

    workspace_id: str
    path: Path
    stats: UploadStats
    expires_in_seconds: float


class _Pull:
    """A blocking ``read(n)`` over an async chunk iterator, for the extracting thread."""

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._chunks = chunks
        self._loop = loop
        self._pending = b""
        self._done = False

    async def _next(self) -> bytes:
        async for chunk in self._chunks:
            if chunk:
                return chunk
        return b""

    def __call__(self, size: int) -> bytes:
        if not self._pending and not self._done:
            future = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            self._pending = future.result()
            self._done = not self._pending
        piece, self._pending = self._pending[:size], self._pending[size:]
        return piece


class Uploads:
    """The uploaded workspaces of one service, under ``root`` (use from one event loop)."""

    def __init__(self, root: Path, limits: LimitsConfig, *, ttl: float | None = None) -> None:
        self._root = root
        self._limits = UploadLimits.of(limits)
        self._pace = UploadPace.of(limits)
        self._ttl = limits.upload_ttl_seconds if ttl is None else ttl
        self._pending: dict[str, Path] = {}
        self._receiving = 0
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._removals: set[asyncio.Task[None]] = set()
        # Threads of their own: an extraction waits on its client, and slow clients
        # must not hold the threads the rest of the service runs its blocking work on.
        self._threads = ThreadPoolExecutor(MAX_PENDING_UPLOADS, thread_name_prefix="upload")

    def clear_leftovers(self) -> None:
        """Remove what a previous server left (none of it can be claimed any more)."""
        shutil.rmtree(self._root, ignore_errors=True)

    async def receive(self, chunks: AsyncIterator[bytes]) -> Upload:
        """Extract the tar stream ``chunks`` into a new upload.

        Raises ``WorkspaceInvalid``, ``WorkspaceTooLarge``, ``UploadTimeout``
        (nothing is kept) or ``CapacityExhausted`` (too many uploads pending).
        """
        if len(self._pending) + self._receiving >= MAX_PENDING_UPLOADS:
            raise CapacityExhausted(
                f"{MAX_PENDING_UPLOADS} uploaded workspaces are already waiting",
                details={"limit": MAX_PENDING_UPLOADS, "retry_after": 5},
            )
        workspace_id = _ID_PREFIX + secrets.token_hex(16)
        path = self._root / workspace_id
        self._receiving += 1
        try:
            self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
            loop = asyncio.get_running_loop()
            read = _Pull(paced(chunks, self._pace), loop)
            extract = functools.partial(extract_upload, read, path, self._limits)
            stats = await loop.run_in_executor(self._threads, extract)
        except BaseException:
            self._remove_later(path)
            raise
        finally:
            self._receiving -= 1
        self._pending[workspace_id] = path
        loop = asyncio.get_running_loop()
        self._timers[workspace_id] = loop.call_later(self._ttl, self._expire, workspace_id)
        log.info("workspace_uploaded", workspace_id=workspace_id, files=stats.files)
        return Upload(workspace_id, path, stats, self._ttl)

    def claim(self, workspace_id: str) -> Path:
        """Take the upload's tree (the caller now owns it; see :meth:`release`).

        Raises ``WorkspaceInvalid`` for an id that is unknown, used or expired.
        """
        path = self._pending.pop(workspace_id, None)
        if path is None:
            raise WorkspaceInvalid(
                f"no uploaded workspace {workspace_id!r} (unknown, already used, or expired)",
                details={"workspace_id": workspace_id[:80]},
            )
        timer = self._timers.pop(workspace_id, None)
        if timer is not None:
            timer.cancel()
        return path

    def release(self, path: Path, after: Iterable[Awaitable[object]] = ()) -> None:
        """Remove a claimed tree once everything in ``after`` is done (in the background)."""
        self._remove_later(path, list(after))

    def holds(self, path: Path) -> bool:
        """Whether ``path`` is (or was) an uploaded tree of this store."""
        return path.parent == self._root and path.name.startswith(_ID_PREFIX)

    def _expire(self, workspace_id: str) -> None:
        self._timers.pop(workspace_id, None)
        path = self._pending.pop(workspace_id, None)
        if path is not None:
            log.info("workspace_upload_expired", workspace_id=workspace_id)
            self._remove_later(path)

    def _remove_later(self, path: Path, after: list[Awaitable[object]] | None = None) -> None:
        async def remove() -> None:
            for item in after or ():
                with contextlib.suppress(Exception):
                    await item
            await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)

        task = asyncio.ensure_future(remove())
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def close(self) -> None:
        """Remove every upload, claimed or not, once pending removals are done."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for path in self._pending.values():
            self._remove_later(path)
        self._pending.clear()
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
        await asyncio.to_thread(shutil.rmtree, self._root, ignore_errors=True)
        self._threads.shutdown(wait=False)
