"""Restore guests from a QEMU snapshot (what a snapshot holds and why: ``snapshot``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from cleanroom.backends.base import GuestSpec
from cleanroom.backends.qemu.argv import WORKSPACE_DRIVE, QemuMachine
from cleanroom.backends.qemu.guest import QemuGuest
from cleanroom.backends.qemu.qmp import QmpClient, QmpClosed
from cleanroom.backends.qemu.snapshot import (
    DISK_NAME,
    IGNORE_SHARED,
    MEMORY_NAME,
    SCRATCH_NAME,
    VMGENID_ARGV,
    ram_argv,
    snapshot_machine,
)
from cleanroom.backends.workspace_disk import fill_workspace_disk
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.images.snapshots import Snapshot

__all__ = ["RestoredGuest", "restore_guest"]

_LOAD_POLL_SECONDS = 0.005


class RestoredGuest(QemuGuest):
    """A guest resumed from a snapshot: QEMU loads the stream into a paused VM (the
    snapshot was taken paused), so ``open_channel`` first waits for the load and
    for the workspace disk being filled (see :meth:`fill_workspace`), then
    continues it."""

    _filling: asyncio.Future[float] | None = None
    _incoming_fd: int | None = None
    """QEMU's descriptor of the stream, loaded once the monitor is connected."""
    _saved_disk_bytes: int | None = None
    """The size of the workspace disk the snapshot guest had (None: the run's own)."""

    def fill_workspace(self, source: Path) -> None:
        """Write the workspace copy ``source`` into the blank workspace disk QEMU was
        started on, in a thread, while the stream loads."""
        self._filling = asyncio.ensure_future(
            asyncio.to_thread(fill_workspace_disk, self._disks.workspace, source)
        )

    async def _filled(self) -> None:
        if self._filling is not None:
            self._timings["workspace_disk_ms"] = await self._filling

    async def _release_vmm_handles(self) -> None:
        # The disk is removed after this: let the writer finish with it first.
        if self._filling is not None and not self._filling.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._filling)
        await super()._release_vmm_handles()

    async def open_channel(
        self, deadline: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self._check_channel_unopened()
        try:
            async with asyncio.timeout_at(deadline):
                if self._qmp is None:
                    sock, self._qmp_sock = self._qmp_sock, None
                    assert sock is not None
                    self._qmp = await QmpClient.connect(sock)
                if self._incoming_fd is not None:
                    fd, self._incoming_fd = self._incoming_fd, None
                    # The stream leaves the RAM out: it is the sealed memfd QEMU maps.
                    await self._qmp.execute("migrate-set-capabilities", IGNORE_SHARED)
                    await self._qmp.execute("migrate-incoming", {"uri": f"fd:{fd}"})
                while True:
                    if self._process.exited() is not None:
                        raise await self._exit_failure()
                    state = await self._qmp.run_state()
                    if state == "paused":
                        # Loaded: the guest runs only once its workspace disk is whole.
                        await self._filled()
                        await self._announce_disk_size()
                        await self._qmp.execute("cont")
                        break
                    if state == "running":
                        await self._filled()
                        break
                    if state != "inmigrate":
                        raise self._failed(f"restore ended in state {state}", state=state)
                    await asyncio.sleep(_LOAD_POLL_SECONDS)
        except QmpClosed as exc:
            raise await self._exit_failure() from exc
        except TimeoutError as exc:
            raise self._failed("the snapshot did not load in time") from exc
        self._timings["restore_ms"] = round((time.monotonic() - self._spawned_at) * 1000, 3)
        return await super().open_channel(deadline)

    async def _announce_disk_size(self) -> None:
        """Tell the guest its workspace disk's size when it differs from the one the
        snapshot guest had (``resources.disk_mib``): a resize to the disk's own size
        changes no byte but raises the device's configuration-change interrupt, and
        the guest's kernel rereads the capacity (before the agent mounts the disk,
        at the run's configure). Either way the host bounds every access by the
        file's real size, and the filesystem on it was made to that size."""
        size = self._disks.workspace.size_bytes
        if self._saved_disk_bytes is None or size == self._saved_disk_bytes:
            return
        assert self._qmp is not None
        await self._qmp.execute("block_resize", {"device": WORKSPACE_DRIVE, "size": size})


async def restore_guest(
    machine: QemuMachine, spec: GuestSpec, snapshot: Snapshot, ram_fd: int
) -> QemuGuest:
    """Start a new QEMU that resumes ``snapshot`` with ``spec``'s own root overlay,
    workspace disk, console and channels; its RAM is a private mapping of
    ``ram_fd``, the snapshot's sealed RAM memfd (``sealed_ram``), which QEMU
    inherits (the caller keeps and closes its own descriptor). Raises
    ``RuntimeLaunchFailed``; a stream QEMU cannot load makes it exit, which
    ``open_channel`` reports."""
    try:
        memory_fd = os.open(snapshot.file(MEMORY_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeLaunchFailed(f"cannot open the snapshot: {exc}") from exc
    try:
        guest = await RestoredGuest.start(
            snapshot_machine(machine),
            spec,
            base_rootfs=snapshot.file(DISK_NAME),
            # Deferred: the stream loads once x-ignore-shared is on (open_channel).
            extra_argv=(
                *ram_argv(machine, Path(f"/proc/self/fd/{ram_fd}")),
                *VMGENID_ARGV,
                "-incoming",
                "defer",
            ),
            extra_fds={
                memory_fd: "snapshot stream (read)",
                ram_fd: "snapshot RAM (sealed memfd, mapped privately)",
            },
            plan_extra={"restored_from": {"snapshot": snapshot.key, "path": str(snapshot.path)}},
            blank_workspace=spec.workspace is not None,
            # A user image's guest has its scratch disk mounted: the snapshot's own.
            base_scratch=None if spec.image is None else snapshot.file(SCRATCH_NAME),
        )
    finally:
        os.close(memory_fd)  # QEMU has its own copy
    guest._incoming_fd = memory_fd
    saved = snapshot.facts.get("workspace_disk_bytes")
    guest._saved_disk_bytes = saved if isinstance(saved, int) else None
    if spec.workspace is not None:
        guest.fill_workspace(spec.workspace)
    return guest
