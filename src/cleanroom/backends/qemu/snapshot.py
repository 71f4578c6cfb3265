"""Save a booted, agent-ready QEMU guest to a snapshot (restores: ``restore``).

The snapshot is three files: ``ram.raw``, the guest's RAM (the snapshot guest's
memory is that file, mapped shared: ``memory-backend-file,share=on``);
``memory.mig``, QEMU's migration stream of the paused guest without that RAM
(device state; the ``x-ignore-shared`` capability leaves shared memory out);
and ``rootfs.raw``, the root disk exactly as that guest left it (the guest's
page cache in its RAM depends on it). No restored QEMU ever opens ``ram.raw``:
the server loads it once into a sealed memfd (``sealed_ram``: its bytes and
size can no longer change, for anyone) and every restored QEMU, privileged or
running as a uid of its own, inherits a descriptor of it and maps it
privately (``share=off``, as ``/proc/self/fd/N``): it reads the snapshot's
pages on first touch, shared with every other guest restored from it, and
gets its own copy only of the pages it writes; nothing it does reaches the
memfd or the file.
QEMU 7.2 has no ``file:`` migration URI: the stream is saved with
``migrate "exec:cat > FILE"`` (QEMU spawns a shell: the snapshot guest, which
never runs anything but the agent waiting for its hello, must be allowed to)
and restored from a descriptor QEMU inherits (``-incoming defer``, then
``migrate-incoming fd:N`` once ``x-ignore-shared`` is set over QMP: QEMU 7.2
has no command-line switch for that capability; no process spawned per run;
its outgoing ``fd:`` takes only a descriptor passed over QMP by name). A
restore is a new QEMU with the same machine and devices; it gets its own copy
of the root disk (an overlay over ``rootfs.raw``, never written), its own
workspace disk, console and channels, like a cold boot.

What the guest is told and what it must not keep:

- the snapshot guest boots with ``cleanroom.snapshot=1`` (see
  ``cleanroom.agent.sysops.SNAPSHOT_CMDLINE_FLAG``): its init leaves the
  workspace disk (a placeholder at snapshot time) unmounted, and the agent
  drops the disks' buffer caches and mounts the run's own disk at its first
  configure, after the restore, so no block cached before the snapshot is read;
- so a restore need not wait for the run's workspace disk: QEMU starts on a
  blank file of the disk's size and loads the stream while the host writes
  the workspace filesystem into that same file; the guest stays paused until
  the filesystem is complete (``cont`` comes after it);
- ``-device vmgenid,guid=auto`` gives every QEMU a new VM generation id,
  which a Linux guest with the vmgenid driver takes as a signal to reseed its
  CRNG; the agent also reseeds it (``RNDRESEEDCRNG``) after mixing in the
  host's 64-byte seed at configure, and reseeds its own Python generators;
- the agent is waiting for the host's hello when the guest is paused, so a
  restored guest starts a fresh session.

QEMU 7.2 opens a memory file read-write (a ``readonly`` one makes the guest's
RAM read-only too; ``rom=off`` came later), which is why the restored guests'
RAM is a sealed memfd and not the file: a compromised restored QEMU must not be
able to rewrite the RAM every later guest starts from (``ram: sealed-memfd``
in the facts says restores work this way; snapshots of older releases, which
kept an unprivileged machine's RAM in the stream, have other keys).

A user image's guests come from snapshots of their own (``image``), made the
same way with that image attached: its guest built the image's command root at
boot (the read-only image disk and the scratch disk mounted, the overlay over
them) and leaves only the workspace for after the restore. Its root-disk state
is thus two disks: ``rootfs.raw`` and ``scratch.qcow2``, the scratch disk as it
left it (compact; each restore gets a raw copy of its own, see
``copy_scratch_disk``). The image disk itself is the cached image file, never
written; the snapshot's facts name it by the image's key, its settings and the
file's identity (device, inode, size, mtime), so a snapshot is only found for
the very file its guest read.

Networked guests come from a second snapshot of the same image (``nic``): its
guest had a NIC when it was saved, on a TAP that QEMU made in a network
namespace of its own (``unshare --net``: nothing reachable, gone with QEMU).
A restore attaches the same NIC model to the run's own TAP in the run's
namespace (a TAP's state is not part of the stream); the guest's interface is
still unconfigured then, and the agent's configure gives it the run's MAC,
address and route, exactly as on a cold guest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from cleanroom.backends.base import GuestSpec
from cleanroom.backends.qemu.argv import SANDBOX, QemuLaunch, QemuMachine, build_argv, nic_argv
from cleanroom.backends.qemu.guest import QemuGuest
from cleanroom.backends.qemu.qmp import QmpClosed
from cleanroom.backends.workspace_disk import (
    DEFAULT_WORKSPACE_DISK_BYTES,
    SCRATCH_DISK_NAME,
    convert_disk,
)
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.images.snapshots import Snapshot, SnapshotCache
from cleanroom.images.userimage import UserImage
from cleanroom.netspec import NetworkAttachment

__all__ = [
    "DISK_NAME",
    "IGNORE_SHARED",
    "MEMORY_NAME",
    "RAM_NAME",
    "SCRATCH_NAME",
    "SNAPSHOT_KERNEL_ARG",
    "SNAPSHOT_MAC",
    "VMGENID_ARGV",
    "image_facts",
    "make_snapshot",
    "ram_argv",
    "snapshot_facts",
    "snapshot_machine",
]

MEMORY_NAME = "memory.mig"
DISK_NAME = "rootfs.raw"
RAM_NAME = "ram.raw"
SCRATCH_NAME = "scratch.qcow2"
"""A user image's snapshot: its scratch disk as the snapshot guest left it."""
IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
SNAPSHOT_KERNEL_ARG = "cleanroom.snapshot=1"
"""Equal to ``cleanroom.agent.sysops.SNAPSHOT_CMDLINE_FLAG`` (the agent imports nothing)."""
VMGENID_ARGV = ("-device", "vmgenid,guid=auto")
SNAPSHOT_MAC = "02:00:00:00:00:01"
"""The NIC's MAC in the networked snapshot (the agent sets each run's own at configure)."""
_SNAPSHOT_TAP = "snap0"
SETTLE_SECONDS = 0.5
"""After the agent opened its port, let it reach its first read before pausing."""
_MIGRATE_POLL_SECONDS = 0.02


def ram_argv(machine: QemuMachine, path: Path, *, shared: bool = False) -> tuple[str, ...]:
    """``machine``'s RAM as the file ``path`` (see :func:`memory_argv`)."""
    return memory_argv(path, machine.memory_mib, shared=shared)


def memory_argv(path: Path, memory_mib: int, *, shared: bool = False) -> tuple[str, ...]:
    """The guest's RAM as the file ``path``: mapped ``shared`` by the snapshot guest
    (its RAM is written to the file), privately by restored guests."""
    backend = f"memory-backend-file,id=ram0,size={memory_mib}M"
    backend += f",mem-path={str(path).replace(',', ',,')},share={'on' if shared else 'off'}"
    return ("-object", backend, "-machine", "memory-backend=ram0")


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
    nic: bool = False,
    image: UserImage | None = None,
) -> dict[str, str | int | bool | None]:
    """What a snapshot of ``machine`` depends on (its cache key is their hash).

    ``devices`` is the whole QEMU command line with the per-run paths and
    descriptors replaced by placeholders: it covers the machine type, accel,
    CPU model, vCPUs, memory, kernel and command line, and every device
    (``nic``: the guest has a network interface; ``image``: the guest runs
    commands in that user image, see :func:`image_facts`).
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
        network=NetworkAttachment("@netns", "@tap", SNAPSHOT_MAC) if nic else None,
        image_disk=None if image is None else Path("@image"),
        scratch_disk=None if image is None else Path("@scratch"),
    )
    argv = [*build_argv(shape), *ram_argv(m, Path("@ram")), *VMGENID_ARGV]
    return {
        **({} if image is None else image_facts(image)),
        "vmm": "qemu",
        "qemu_version": qemu_version,
        "image_digest": image_digest,
        "agent_version": agent_version,
        "kernel_version": kernel_version,
        "accel": m.accel,
        "vcpus": m.vcpus,
        "memory_mib": m.memory_mib,
        "workspace_disk_bytes": disk_bytes,
        "nic": nic,
        "ram": "sealed-memfd",
        "devices": shlex.join(argv),
    }


def image_facts(image: UserImage) -> dict[str, str | int | bool | None]:
    """What a snapshot of a guest in user image ``image`` depends on besides the
    machine: the image's key and settings (written to the scratch disk) and the
    identity of the file attached as its disk (the guest's caches hold its
    blocks). ``OSError`` if the file is gone."""
    st = image.rootfs.stat()
    settings = json.dumps(image.config.to_dict(), sort_keys=True, separators=(",", ":"))
    return {
        "user_image": image.key,
        "user_image_settings": hashlib.sha256(settings.encode()).hexdigest(),
        "user_image_file": f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}",
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
        """Pause the guest and write its migration stream, without its (file-backed,
        shared) RAM, to ``memory``; the ms it took.

        The guest stays paused (QEMU drains its disk writes on ``stop``).
        Raises ``RuntimeLaunchFailed``.
        """
        qmp = self._qmp
        if qmp is None:
            raise RuntimeLaunchFailed("the snapshot guest's monitor is not connected")
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            await qmp.execute("migrate-set-capabilities", IGNORE_SHARED)
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


class _NetSnapshotSource(_SnapshotSource):
    """A snapshot guest with a NIC, on a TAP in a network namespace of its own."""

    wrapper: ClassVar[tuple[str, ...]] = ("unshare", "--net")


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
    *,
    nic: bool = False,
    image: UserImage | None = None,
) -> Snapshot:
    """Boot a guest of ``machine`` until its agent waits for a hello, save it and its
    root disk, and publish both in ``cache`` under ``key`` (``nic``: the guest has
    a network interface; ``image``: it runs commands in that user image, whose
    scratch disk is saved too; see the module docstring).

    Raises ``RuntimeLaunchFailed`` (the guest did not boot, or saving failed);
    nothing is left running and no partial snapshot is published.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with cache.staging() as staging:
        run_dir = staging / "boot"
        run_dir.mkdir()
        spec = GuestSpec(run_id="snapshot", run_dir=run_dir, launch_seconds=seconds, image=image)
        ram = ram_argv(machine, staging / RAM_NAME, shared=True)
        source, devices = (
            (_NetSnapshotSource, (*nic_argv(_SNAPSHOT_TAP, SNAPSHOT_MAC), *ram, *VMGENID_ARGV))
            if nic
            else (_SnapshotSource, (*ram, *VMGENID_ARGV))
        )
        # The NIC goes last, as build_argv places a run's: the devices' order is
        # their layout, which a restore must repeat.
        guest = await source.start(snapshot_machine(machine), spec, extra_argv=devices)
        try:
            # Open: the agent waits for a hello that never comes (destroy closes it).
            await guest.open_channel(deadline)
            await asyncio.sleep(SETTLE_SECONDS)
            await guest.save(staging / MEMORY_NAME, deadline + seconds)
            await guest.stop_vmm()
            await asyncio.to_thread(_flatten_disk, run_dir, staging / DISK_NAME, machine.qemu_img)
            if image is not None:
                await asyncio.to_thread(
                    convert_disk,
                    run_dir / SCRATCH_DISK_NAME,
                    staging / SCRATCH_NAME,
                    "qcow2",
                    machine.qemu_img,
                    what="snapshot guest's scratch disk",
                )
        finally:
            await guest.destroy()
            await asyncio.to_thread(shutil.rmtree, run_dir, ignore_errors=True)
        files: tuple[str, ...] = (MEMORY_NAME, RAM_NAME, DISK_NAME)
        if image is not None:
            files = (*files, SCRATCH_NAME)
        return await asyncio.to_thread(cache.publish, staging, key, facts, files)
