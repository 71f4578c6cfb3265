"""Which snapshot a prepared QEMU backend restores from, and when it is made.

One :class:`Snapshots` per prepared backend and image (the built-in one, or a
user image: ``image``, cached with that image): it knows the facts and key of its
two snapshots (:func:`cleanroom.backends.qemu.snapshot.snapshot_facts`), one
of a guest without a NIC and one with (for networked runs and pooled guests on
network slots), says whether a run's guest fits them (its image, the
configured shape and disk size), finds and verifies the one it needs, and makes
it either on demand (``ensure``, behind ``cleanroom image warm``) or, the first
time a run finds none, in the background while that run boots cold. One is made
at a time. A background attempt that fails is not retried for
:data:`RETRY_SECONDS` (each costs a boot); meanwhile its reason is given to
every run needing it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from cleanroom.backends.base import GuestSpec, NoRestore
from cleanroom.backends.qemu.argv import QemuMachine
from cleanroom.backends.qemu.sealed_ram import SnapshotRams
from cleanroom.backends.qemu.snapshot import RAM_NAME, make_snapshot, snapshot_facts
from cleanroom.backends.workspace_disk import DEFAULT_WORKSPACE_DISK_BYTES
from cleanroom.errors import CleanroomError
from cleanroom.images.snapshots import (
    KEPT_PER_IMAGE,
    Snapshot,
    SnapshotCache,
    SnapshotInvalid,
    snapshot_key,
)
from cleanroom.images.userimage import UserImage

__all__ = ["Snapshots"]

_log = logging.getLogger(__name__)

RETRY_SECONDS = 600.0
"""How long after a failed background attempt the next run may start another."""


class _Variant:
    """One of the two snapshots: its facts, key, and background attempt."""

    def __init__(self, facts: dict[str, str | int | bool | None]) -> None:
        self.facts = facts
        self.key = snapshot_key(facts)
        self.making: asyncio.Task[Snapshot | None] | None = None
        self.failure: str | None = None
        self.failed_at = 0.0


class Snapshots:
    """The snapshots of one prepared QEMU machine (see the module docstring)."""

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
        image: UserImage | None = None,
    ) -> None:
        """``image``: the snapshots are of guests in this user image (``OSError`` if
        its file is gone); None: of the built-in image."""
        self.machine = machine
        self.cache = cache
        self.image = image
        self._variants = {
            nic: _Variant(
                snapshot_facts(
                    machine,
                    qemu_version=qemu_version,
                    image_digest=image_digest,
                    agent_version=agent_version,
                    kernel_version=kernel_version,
                    nic=nic,
                    image=image,
                )
            )
            for nic in (False, True)
        }
        self._boot_seconds = boot_seconds
        self._lock = asyncio.Lock()
        self.made_ms: float | None = None
        """How long the last snapshot this process made took (boot + save)."""
        self.rams = SnapshotRams(RAM_NAME)
        """The snapshots' RAM as sealed memfds, one per snapshot restored from."""

    @property
    def facts(self) -> dict[str, str | int | bool | None]:
        """The facts of the snapshot without a NIC."""
        return self._variants[False].facts

    @property
    def key(self) -> str:
        """The key of the snapshot without a NIC."""
        return self._variants[False].key

    def key_for(self, *, nic: bool) -> str:
        """The key of the snapshot with (``nic``) or without a NIC."""
        return self._variants[nic].key

    def unfit(self, spec: GuestSpec) -> str | None:
        """Why ``spec``'s guest cannot come from these snapshots, or None if it can."""
        if spec.image != self.image:
            return "the run uses another image than the snapshot's"
        if (
            spec.image is not None
            and spec.disk_mib is not None
            and spec.disk_mib << 20 != DEFAULT_WORKSPACE_DISK_BYTES
        ):
            # Its writable layer is on the scratch disk, a copy of the snapshot's.
            return "the run asks for another disk size than the user image's snapshot"
        if spec.vcpus not in (None, self.machine.vcpus):
            return "the run asks for another vCPU count than the snapshot's"
        if spec.memory_mib not in (None, self.machine.memory_mib):
            return "the run asks for another memory size than the snapshot's"
        return None

    async def find(self, *, nic: bool = False) -> Snapshot | NoRestore:
        """The verified snapshot with (``nic``) or without a NIC, or why there is none
        usable (starting one in the background if none is being made and no
        attempt has failed lately)."""
        variant = self._variants[nic]
        try:
            return await asyncio.to_thread(self.cache.find, variant.key)
        except SnapshotInvalid as exc:
            reason = exc.reason
        if variant.failure is not None and time.monotonic() - variant.failed_at < RETRY_SECONDS:
            return NoRestore(f"{reason}; making it failed: {variant.failure}")
        if variant.making is None or variant.making.done():
            variant.making = asyncio.create_task(self._make_logged(nic))
            return NoRestore(f"{reason}; making it now")
        return NoRestore(f"{reason}; it is being made")

    async def ensure(self, *, nic: bool = False) -> Snapshot:
        """The snapshot, made now if there is none valid (``RuntimeLaunchFailed`` if
        that fails)."""
        found = await self.find_quiet(nic=nic)
        if found is not None:
            return found
        making = self._variants[nic].making
        if making is not None and not making.done():
            made = await asyncio.shield(making)
            if made is not None:
                return made
        return await self._make(nic)

    async def find_quiet(self, *, nic: bool = False) -> Snapshot | None:
        """The verified snapshot, or None (starts nothing)."""
        try:
            return await asyncio.to_thread(self.cache.find, self._variants[nic].key)
        except SnapshotInvalid:
            return None

    async def _make(self, nic: bool) -> Snapshot:
        variant = self._variants[nic]
        async with self._lock:
            found = await self.find_quiet(nic=nic)
            if found is not None:
                return found
            started = time.monotonic()
            snap = await make_snapshot(
                self.machine,
                self.cache,
                variant.key,
                variant.facts,
                self._boot_seconds,
                nic=nic,
                image=self.image,
            )
            self.made_ms = round((time.monotonic() - started) * 1000, 1)
            # Other servers sharing this cache may use other shapes: the least
            # recently used beyond a bound go (see ``SnapshotCache.prune``).
            keep = [v.key for v in self._variants.values()]
            await asyncio.to_thread(functools.partial(self.cache.prune, keep, most=KEPT_PER_IMAGE))
            self.rams.keep(keep)
            return snap

    async def _make_logged(self, nic: bool) -> Snapshot | None:
        """``_make`` in the background: a failure is remembered and logged, not raised."""
        variant = self._variants[nic]
        try:
            return await self._make(nic)
        except CleanroomError as exc:
            variant.failure = exc.message
        except OSError as exc:
            variant.failure = str(exc)
        variant.failed_at = time.monotonic()
        _log.warning("making the guest snapshot failed: %s", variant.failure)
        return None

    async def close(self) -> None:
        """Stop snapshots being made (their guests are destroyed, nothing is published)
        and release the RAM memfds (running guests keep their own descriptors)."""
        for variant in self._variants.values():
            task, variant.making = variant.making, None
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
        self.rams.close()
