"""Run finalization after the answer: releasing a finished run's guest and network.

A run's result (exit status and output) is known when its command exits. By
then the run path has already SIGKILLed the guest's VMM, so nothing of the run
executes any more; what is left -- reaping the VMM, removing its disks,
tearing down the run's network namespace and reading its counters, writing
the final run record, letting the warm pool refill -- takes tens of
milliseconds and changes nothing the caller can observe in the result. It
runs here, in the background, so the caller gets its answer first.

Every finalizer is tracked by run id until it ends: reading a run's record
waits for it (:meth:`Finalizers.wait`), and the service's shutdown drains
them all (:meth:`Finalizers.drain`), so nothing is leaked or half-written.
Finalizers are never cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

__all__ = ["Finalizers"]

log = structlog.get_logger("cleanroom.finalize")


class Finalizers:
    """Background finalizers by run id. Use from one asyncio loop."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def pending(self) -> int:
        """How many finalizers are still running."""
        return len(self._tasks)

    def start(self, run_id: str, finalizer: Coroutine[Any, Any, None]) -> None:
        """Run ``finalizer`` for ``run_id`` in the background (one per run)."""
        if run_id in self._tasks:
            finalizer.close()
            raise ValueError(f"run {run_id} already has a finalizer")
        task = asyncio.ensure_future(finalizer)
        self._tasks[run_id] = task
        task.add_done_callback(lambda t: self._done(run_id, t))

    def _done(self, run_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(run_id, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("run finalization failed", run_id=run_id, error=repr(exc))

    async def wait(self, run_id: str, timeout: float = 60.0) -> bool:
        """Wait (at most ``timeout`` s) until ``run_id`` is finalized; False on timeout.

        Returns at once for a run without a pending finalizer. Cancelling the
        caller never cancels the finalizer.
        """
        task = self._tasks.get(run_id)
        if task is None:
            return True
        done, _ = await asyncio.wait({task}, timeout=timeout)
        return bool(done)

    async def drain(self) -> None:
        """Wait for every pending finalizer, including ones started meanwhile."""
        while self._tasks:
            await asyncio.wait(set(self._tasks.values()))
