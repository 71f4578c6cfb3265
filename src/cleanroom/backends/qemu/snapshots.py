"""Which snapshot a prepared QEMU backend restores from, and when it is made.

One :class:`Snapshots` per prepared backend: it knows the snapshot's facts and
key (:func:`cleanroom.backends.qemu.snapshot.snapshot_facts`), says whether a
run's guest fits it (built-in image, no NIC, the configured shape and disk
size), finds and verifies it, and makes it either on demand (``ensure``,
behind ``cleanroom image warm``) or, the first time a run finds none, in the
background while that run boots cold. A background attempt that fails is not
retried for :data:`RETRY_SECONDS` (each costs a boot); meanwhile its reason is
given to every run instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cleanroom.backends.base import GuestSpec, NoRestore
from cleanroom.backends.qemu.argv import QemuMachine
from cleanroom.backends.qemu.snapshot import make_snapshot, snapshot_facts
from cleanroom.backends.workspace_disk import DEFAULT_WORKSPACE_DISK_BYTES
from cleanroom.errors import CleanroomError
from cleanroom.images.snapshots import Snapshot, SnapshotCache, SnapshotInvalid, snapshot_key

__all__ = ["Snapshots"]

_log = logging.getLogger(__name__)

RETRY_SECONDS = 600.0
"""How long after a failed background attempt the next run may start another."""


class Snapshots:
    """The snapshot of one prepared QEMU machine (see the module docstring)."""

    def __init__(
        self,
        machine: QemuMachine,
        cache: SnapshotCache,
        *,
        qemu_version: str,
        image_digest: str,
        agent_version: str,
        kernel_version: str,
        boot_seconds: float,
    ) -> None:
        self.machine = machine
        self.cache = cache
        self.facts = snapshot_facts(
            machine,
            qemu_version=qemu_version,
            image_digest=image_digest,
            agent_version=agent_version,
            kernel_version=kernel_version,
        )
        self.key = snapshot_key(self.facts)
        self._boot_seconds = boot_seconds
        self._lock = asyncio.Lock()
        self._making: asyncio.Task[Snapshot | None] | None = None
        self._failure: str | None = None
        self._failed_at = 0.0
        self.made_ms: float | None = None
        """How long the last snapshot this process made took (boot + save)."""

    def unfit(self, spec: GuestSpec) -> str | None:
        """Why ``spec``'s guest cannot come from this snapshot, or None if it can."""
        if spec.image is not None:
            return "the run uses a user image (snapshots are of the built-in image)"
        if spec.network is not None:
            return "the run needs a network interface (restored guests have none)"
        if spec.disk_mib is not None and spec.disk_mib << 20 != DEFAULT_WORKSPACE_DISK_BYTES:
            return "the run asks for another workspace disk size than the snapshot's"
        if spec.vcpus not in (None, self.machine.vcpus):
            return "the run asks for another vCPU count than the snapshot's"
        if spec.memory_mib not in (None, self.machine.memory_mib):
            return "the run asks for another memory size than the snapshot's"
        return None

    async def find(self) -> Snapshot | NoRestore:
        """The verified snapshot, or why there is none usable (starting one in the
        background if none is being made and no attempt has failed)."""
        try:
            return await asyncio.to_thread(self.cache.find, self.key)
        except SnapshotInvalid as exc:
            reason = exc.reason
        if self._failure is not None and time.monotonic() - self._failed_at < RETRY_SECONDS:
            return NoRestore(f"{reason}; making it failed: {self._failure}")
        if self._making is None or self._making.done():
            self._making = asyncio.create_task(self._make_logged())
            return NoRestore(f"{reason}; making it now")
        return NoRestore(f"{reason}; it is being made")

    async def ensure(self) -> Snapshot:
        """The snapshot, made now if there is none valid (``RuntimeLaunchFailed`` if
        that fails)."""
        found = await self.find_quiet()
        if found is not None:
            return found
        if self._making is not None and not self._making.done():
            made = await asyncio.shield(self._making)
            if made is not None:
                return made
        return await self._make()

    async def find_quiet(self) -> Snapshot | None:
        """The verified snapshot, or None (starts nothing)."""
        try:
            return await asyncio.to_thread(self.cache.find, self.key)
        except SnapshotInvalid:
            return None

    async def _make(self) -> Snapshot:
        async with self._lock:
            found = await self.find_quiet()
            if found is not None:
                return found
            started = time.monotonic()
            snap = await make_snapshot(
                self.machine, self.cache, self.key, self.facts, self._boot_seconds
            )
            self.made_ms = round((time.monotonic() - started) * 1000, 1)
            # Snapshots of other shapes or agents of this image are stale now.
            await asyncio.to_thread(self.cache.prune, self.key)
            return snap

    async def _make_logged(self) -> Snapshot | None:
        """``_make`` in the background: a failure is remembered and logged, not raised."""
        try:
            return await self._make()
        except CleanroomError as exc:
            self._failure = exc.message
        except OSError as exc:
            self._failure = str(exc)
        self._failed_at = time.monotonic()
        _log.warning("making the guest snapshot failed: %s", self._failure)
        return None

    async def close(self) -> None:
        """Stop a snapshot being made (its guest is destroyed, nothing is published)."""
        task, self._making = self._making, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(BaseException):
                await task
