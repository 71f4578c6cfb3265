"""The one owner of everything a run holds: released on every exit path.

Each resource is registered the moment it exists (no ``await`` in between), as
a release callback on an :class:`~contextlib.AsyncExitStack`; :meth:`close`
runs them newest first, every one even if an earlier one fails, and cannot be
interrupted by cancellation: leaking a VMM is worse than a slow cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cleanroom.backends.base import Guest
from cleanroom.service.network import Lease, Slot
from cleanroom.service.record import RunRecorder

__all__ = ["NetworkHold", "RunResources", "remove_path"]


class NetworkHold:
    """A run's network: a pooled guest's slot, later (maybe) activated into a lease.

    Released once, with the record's ``network_cleanup_ms`` and ``network``
    summary when a lease carried the run's traffic; a slot that never did
    leaves no trace in the record.
    """

    def __init__(self, rec: RunRecorder, slot: Slot | None = None) -> None:
        self._rec = rec
        self._slot = slot
        self._lease: Lease | None = None

    def leased(self, lease: Lease) -> None:
        """``lease`` now owns the network (the slot, if any, became it)."""
        self._lease = lease
        self._slot = None

    async def release(self) -> None:
        if self._slot is not None:
            slot, self._slot = self._slot, None
            await slot.release()
        if self._lease is not None:
            lease, self._lease = self._lease, None
            started = time.monotonic()
            summary = await lease.release()
            self._rec.timing("network_cleanup_ms", (time.monotonic() - started) * 1000)
            self._rec.set_network(summary.to_dict())


class RunResources:
    """Release callbacks of one run, run newest first by :meth:`close`."""

    def __init__(self, rec: RunRecorder) -> None:
        self._rec = rec
        self._stack = contextlib.AsyncExitStack()
        self._closing: asyncio.Future[None] | None = None

    def push(self, release: Callable[[], Awaitable[None]]) -> None:
        """Call ``release`` at :meth:`close` (after everything registered later)."""
        self._stack.push_async_callback(release)

    def guest(self, guest: Guest) -> None:
        """Own ``guest``: destroyed at close (timed as ``guest_teardown_ms``)."""

        async def destroy() -> None:
            with self._rec.timed("guest_teardown"):
                await guest.destroy()

        self.push(destroy)

    def path(self, path: Path) -> None:
        """Remove the file or directory ``path`` at close (if it still exists)."""

        async def remove() -> None:
            await asyncio.to_thread(remove_path, path)

        self.push(remove)

    async def close(self) -> None:
        """Release everything (once; later calls wait for the first).

        Completes even if the calling task is cancelled meanwhile; raises the
        last release failure after every release has run.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._stack.aclose())
        while not self._closing.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._closing)
        self._closing.result()


def remove_path(path: Path) -> None:
    """Remove the file or directory tree ``path``; nothing if it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
