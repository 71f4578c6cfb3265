"""Save a booted, agent-ready QEMU guest to a snapshot, and restore guests from it.

The snapshot is two files: ``memory.mig``, QEMU's migration stream of the
paused guest (RAM and device state), and ``rootfs.raw``, the root disk exactly
as that guest left it (the guest's page cache in the stream depends on it).
QEMU 7.2 has no ``file:`` migration URI: the stream is saved with
``migrate "exec:cat > FILE"`` (QEMU spawns a shell: the snapshot guest, which
never runs anything but the agent waiting for its hello, must be allowed to)
and restored from a descriptor QEMU inherits, ``-incoming fd:N`` (no process
spawned per run; QEMU 7.2's outgoing ``fd:`` takes only a descriptor passed
over QMP by name). A restore is a new QEMU with the same machine and devices;
it gets its own copy of the root disk (an
overlay over ``rootfs.raw``, never written), its own workspace disk, console
and channels, like a cold boot.

What the guest is told and what it must not keep:

- the snapshot guest boots with ``cleanroom.snapshot=1`` (see
  ``cleanroom.agent.sysops.SNAPSHOT_CMDLINE_FLAG``): its init leaves the
  workspace disk (a placeholder at snapshot time) unmounted, and the agent
  drops the disks' buffer caches and mounts the run's own disk at its first
  configure, after the restore, so no block cached before the snapshot is read;
- ``-device vmgenid,guid=auto`` gives every QEMU a new VM generation id,
  which a Linux guest with the vmgenid driver takes as a signal to reseed its
  CRNG; the agent also reseeds it (``RNDRESEEDCRNG``) after mixing in the
  host's 64-byte seed at configure, and reseeds its own Python generators;
- the agent is waiting for the host's hello when the guest is paused, so a
  restored guest starts a fresh session; it has no NIC (networked runs boot
  cold).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from cleanroom.backends.base import GuestSpec
from cleanroom.backends.qemu.argv import SANDBOX, QemuLaunch, QemuMachine, build_argv
from cleanroom.backends.qemu.guest import QemuGuest
from cleanroom.backends.qemu.qmp import QmpClient, QmpClosed
from cleanroom.backends.workspace_disk import DEFAULT_WORKSPACE_DISK_BYTES
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.images.snapshots import Snapshot, SnapshotCache

__all__ = [
    "DISK_NAME",
    "MEMORY_NAME",
    "SNAPSHOT_KERNEL_ARG",
    "VMGENID_ARGV",
    "make_snapshot",
    "restore_guest",
    "snapshot_facts",
    "snapshot_machine",
]

MEMORY_NAME = "memory.mig"
DISK_NAME = "rootfs.raw"
SNAPSHOT_KERNEL_ARG = "cleanroom.snapshot=1"
"""Equal to ``cleanroom.agent.sysops.SNAPSHOT_CMDLINE_FLAG`` (the agent imports nothing)."""
VMGENID_ARGV = ("-device", "vmgenid,guid=auto")
SETTLE_SECONDS = 0.5
"""After the agent opened its port, let it reach its first read before pausing."""
_MIGRATE_POLL_SECONDS = 0.02
_LOAD_POLL_SECONDS = 0.005


def snapshot_machine(machine: QemuMachine) -> QemuMachine:
    """``machine`` as a snapshot guest and every guest restored from it boot it."""
    if SNAPSHOT_KERNEL_ARG in machine.extra_kernel_args:
        return machine
    return replace(machine, extra_kernel_args=(*machine.extra_kernel_args, SNAPSHOT_KERNEL_ARG))


def snapshot_facts(
    machine: QemuMachine,
    *,
    qemu_version: str,
    image_digest: str,
    agent_version: str,
    kernel_version: str,
    disk_bytes: int = DEFAULT_WORKSPACE_DISK_BYTES,
) -> dict[str, str | int | bool | None]:
    """What a snapshot of ``machine`` depends on (its cache key is their hash).

    ``devices`` is the whole QEMU command line with the per-run paths and
    descriptors replaced by placeholders: it covers the machine type, accel,
    CPU model, vCPUs, memory, kernel and command line, and every device.
    """
    m = snapshot_machine(machine)
    shape = QemuLaunch(
        machine=m,
        rootfs=Path("@rootfs"),
        rootfs_format="raw",
        console_log=Path("@console"),
        agent_fd=-1,
        qmp_fd=-2,
        workspace_disk=Path("@workspace"),
    )
    argv = [*build_argv(shape), *VMGENID_ARGV]
    return {
        "vmm": "qemu",
        "qemu_version": qemu_version,
        "image_digest": image_digest,
        "agent_version": agent_version,
        "kernel_version": kernel_version,
        "accel": m.accel,
        "vcpus": m.vcpus,
        "memory_mib": m.memory_mib,
        "workspace_disk_bytes": disk_bytes,
        "devices": shlex.join(argv),
    }


class _SnapshotSource(QemuGuest):
    """The guest a snapshot is taken of (it never serves a run)."""

    # QEMU 7.2 saves only through ``exec:`` (its outgoing ``fd:`` needs a descriptor
    # passed over QMP), which spawns a shell: this guest may spawn. It runs nothing
    # but the agent waiting for its first message; every run's guest keeps spawn=deny.
    sandbox: ClassVar[str] = SANDBOX.replace("spawn=deny", "spawn=allow")
    # The shell writes the stream into the (root's) snapshot staging directory.
    may_drop: ClassVar[bool] = False

    async def save(self, memory: Path, deadline: float) -> float:
        """Pause the guest and write its migration stream to ``memory``; the ms it took.

        The guest stays paused (QEMU drains its disk writes on ``stop``).
        Raises ``RuntimeLaunchFailed``.
        """
        qmp = self._qmp
        if qmp is None:
            raise RuntimeLaunchFailed("the snapshot guest's monitor is not connected")
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            await qmp.execute("stop")
            uri = f"exec:cat > {shlex.quote(str(memory))}"
            await qmp.execute("migrate", {"uri": uri})
            while True:
                info: dict[str, Any] = await qmp.execute("query-migrate")
                status = info.get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled"):
                    raise RuntimeLaunchFailed(
                        f"saving the guest failed: {info.get('error-desc', status)}",
                        details={"migrate_status": status},
                    )
                if loop.time() > deadline:
                    raise RuntimeLaunchFailed("saving the guest did not finish in time")
                await asyncio.sleep(_MIGRATE_POLL_SECONDS)
        except QmpClosed as exc:
            raise self._failed(f"QEMU went away while saving the guest: {exc}") from exc
        return round((time.monotonic() - started) * 1000, 3)

    async def stop_vmm(self) -> None:
        """Kill QEMU (the stream is written) so its disk can be copied."""
        await self._process.kill()


def _flatten_disk(run_dir: Path, dest: Path, qemu_img: str) -> None:
    """The snapshot guest's root disk (a raw copy or a qcow2 overlay) as a standalone
    sparse raw file at ``dest``."""
    qcow2 = run_dir / "rootfs.qcow2"
    source, fmt = (qcow2, "qcow2") if qcow2.exists() else (run_dir / "rootfs.raw", "raw")
    try:
        subprocess.run(
            [qemu_img, "convert", "-q", "-f", fmt, "-O", "raw", str(source), str(dest)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        stderr = getattr(exc, "stderr", None) or ""
        raise RuntimeLaunchFailed(
            f"could not copy the snapshot guest's disk: {exc}",
            details={"stderr": stderr.strip()[-500:]},
        ) from exc


async def make_snapshot(
    machine: QemuMachine,
    cache: SnapshotCache,
    key: str,
    facts: dict[str, str | int | bool | None],
    seconds: float,
) -> Snapshot:
    """Boot a guest of ``machine`` until its agent waits for a hello, save it and its
    root disk, and publish both in ``cache`` under ``key``.

    Raises ``RuntimeLaunchFailed`` (the guest did not boot, or saving failed);
    nothing is left running and no partial snapshot is published.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with cache.staging() as staging:
        run_dir = staging / "boot"
        run_dir.mkdir()
        spec = GuestSpec(run_id="snapshot", run_dir=run_dir, launch_seconds=seconds)
        guest = await _SnapshotSource.start(
            snapshot_machine(machine), spec, extra_argv=VMGENID_ARGV
        )
        try:
            # Open: the agent waits for a hello that never comes (destroy closes it).
            await guest.open_channel(deadline)
            await asyncio.sleep(SETTLE_SECONDS)
            await guest.save(staging / MEMORY_NAME, deadline + seconds)
            await guest.stop_vmm()
            await asyncio.to_thread(_flatten_disk, run_dir, staging / DISK_NAME, machine.qemu_img)
        finally:
            await guest.destroy()
            await asyncio.to_thread(shutil.rmtree, run_dir, ignore_errors=True)
        return await asyncio.to_thread(cache.publish, staging, key, facts, (MEMORY_NAME, DISK_NAME))


class RestoredGuest(QemuGuest):
    """A guest resumed from a snapshot: QEMU loads the stream into a paused VM (the
    snapshot was taken paused), so ``open_channel`` first waits for the load and
    continues it."""

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
                while True:
                    if self._process.exited() is not None:
                        raise await self._exit_failure()
                    state = await self._qmp.run_state()
                    if state == "paused":
                        await self._qmp.execute("cont")
                        break
                    if state == "running":
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


async def restore_guest(machine: QemuMachine, spec: GuestSpec, snapshot: Snapshot) -> QemuGuest:
    """Start a new QEMU that resumes ``snapshot`` with ``spec``'s own root overlay,
    workspace disk, console and channels. Raises ``RuntimeLaunchFailed``; a
    stream QEMU cannot load makes it exit, which ``open_channel`` reports."""
    try:
        memory_fd = os.open(snapshot.file(MEMORY_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeLaunchFailed(f"cannot open the snapshot: {exc}") from exc
    try:
        return await RestoredGuest.start(
            snapshot_machine(machine),
            spec,
            base_rootfs=snapshot.file(DISK_NAME),
            extra_argv=(*VMGENID_ARGV, "-incoming", f"fd:{memory_fd}"),
            extra_fds={memory_fd: "snapshot stream (read)"},
            plan_extra={"restored_from": {"snapshot": snapshot.key, "path": str(snapshot.path)}},
        )
    finally:
        os.close(memory_fd)  # QEMU has its own copy
