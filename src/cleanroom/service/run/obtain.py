"""Obtain a guest for a run: warm from the pool, or cold-booted; the caller need not know.

Either way the guest has greeted (its agent answered the hello), the run's
network is in place (leased before a cold boot, or the pooled guest's slot
activated), everything is owned by the run's :class:`RunResources`, and the
record says which way it went (``pool``, boot timings).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cleanroom.agent import AgentClient, GuestNetwork
from cleanroom.backends.base import Backend, Guest, GuestSpec
from cleanroom.changes import HostManifest
from cleanroom.service.boots import BootGate
from cleanroom.service.greet import Greeted, boot_and_greet, restore_and_greet
from cleanroom.service.network import Lease, RunNetworks
from cleanroom.service.pool import WarmGuest, WarmPool
from cleanroom.service.record import RunRecorder
from cleanroom.service.run.manifests import ManifestJob
from cleanroom.service.run.plan import RunPlan
from cleanroom.service.run.resources import NetworkHold, RunResources, remove_path
from cleanroom.service.staging import stage_workspace, staging_root
from cleanroom.service.workspace import ArchiveStats

__all__ = ["WARM_STREAM_LIMIT", "Obtained", "Start", "obtain_guest"]

Start = Literal["warm", "cold", "restored"]
"""How a run's guest started: from the warm pool, booted, or resumed from a snapshot."""

WARM_STREAM_LIMIT = 16 << 20
"""Workspaces larger than this (bytes) boot cold with a host-made disk instead of
taking a warm guest and streaming: streaming through the agent runs at a few
MiB/s under emulation, a cold boot with the disk costs a few seconds."""


@dataclass(frozen=True)
class Obtained:
    """A greeted guest, ready for configure."""

    guest: Guest
    client: AgentClient
    network: GuestNetwork | None
    """The guest's eth0 settings (None: no network path)."""
    plan_path: Path
    """The VMM plan, in the run directory."""
    seeded: bool
    """The workspace is already on the guest's disk (made on the host before boot)."""
    start: Start
    """Which way the guest came (the record's ``pool``: ``hit`` for warm)."""
    manifest: HostManifest | None = None
    """For a host-made disk of a writable workspace: the manifest of what is on it."""


async def obtain_guest(
    plan: RunPlan,
    backend: Backend,
    networks: RunNetworks | None,
    pool: WarmPool | None,
    boots: BootGate | None,
    scan: ArchiveStats,
    rec: RunRecorder,
    res: RunResources,
) -> Obtained:
    """A guest for ``plan``, warm if the pool has one that fits, else cold.

    A pooled guest has an empty workspace disk, so its workspace is streamed
    through the agent; above :data:`WARM_STREAM_LIMIT` a cold boot with a
    host-made disk is faster, so the pool is skipped. A run that needs a NIC
    can only use a guest booted on a reserved network slot.
    """
    needs_nic = networks is not None and bool(plan.policy.allow)
    fits = scan.bytes <= WARM_STREAM_LIMIT
    warm = None
    if pool is not None and fits and (not needs_nic or pool.network is not None):
        warm = pool.take()
    if warm is not None and pool is not None:
        passes = await warm.claim()  # its agent is idle from here on
        if passes is not None:
            return await _claim_warm(pool, warm, passes, plan, needs_nic, rec, res)
        pool.discard(warm)  # unfit after all: this run starts its own guest
    lease = None
    if networks is not None and needs_nic:
        with rec.timed("network_setup"):
            lease = await networks.setup(plan.run_id, plan.policy, plan.run_dir)
        hold = NetworkHold(rec)
        hold.leased(lease)
        res.push(hold.release)
    else:
        rec.set_no_network()
    return await _boot_cold(plan, backend, lease, boots, scan, rec, res)


async def _claim_warm(
    pool: WarmPool,
    warm: WarmGuest,
    passes: int,
    plan: RunPlan,
    needs_nic: bool,
    rec: RunRecorder,
    res: RunResources,
) -> Obtained:
    """Adopt a pooled guest: its artifacts move into the run directory at cleanup."""
    rec.set_start("warm")
    hold = NetworkHold(rec, warm.slot)
    res.push(hold.release)  # after the guest: its NIC is on the slot

    async def release_pooled() -> None:
        # A pooled guest lived in its own directory: keep its console log with the run.
        console = warm.guest.console_path
        with contextlib.suppress(OSError):
            await asyncio.to_thread(shutil.copyfile, console, rec.run_dir / console.name)
        warm.discard_dir()
        pool.released()

    res.push(release_pooled)
    res.guest(warm.guest)
    res.push(_closer(warm.client))
    plan_copy = plan.run_dir / warm.guest.plan_path.name
    # A few KiB: copied in place, as the record is written (a thread hop costs more).
    shutil.copyfile(warm.guest.plan_path, plan_copy)
    rec.add_artifact("plan", plan_copy.name)
    rec.set_guest(
        isolation=warm.guest.isolation, agent_version=warm.agent_version, kernel=warm.kernel
    )
    rec.set_pool(
        "hit",
        boot_ms=warm.boot_ms,
        idle_ms=(time.monotonic() - warm.ready_at) * 1000,
        restored=warm.restored,
        fallback=warm.fallback,
        passes=passes,
    )
    _copy_guest_timings(warm.guest, rec)
    rec.timing("vm_ready_ms", 0.0)
    rec.timing("agent_connect_wait_ms", 0.0)
    guest_net = None
    if needs_nic and warm.slot is not None:
        # The slot dropped everything since boot; now it gets this run's policy.
        with rec.timed("network_setup"):
            lease = await warm.slot.activate(plan.run_id, plan.policy, plan.run_dir)
        hold.leased(lease)
        guest_net = _lease_network(lease, rec)
    else:
        # Any NIC stays behind the slot's drop-all table: nothing passes.
        rec.set_no_network()
    return Obtained(warm.guest, warm.client, guest_net, plan_copy, seeded=False, start="warm")


async def _boot_cold(
    plan: RunPlan,
    backend: Backend,
    lease: Lease | None,
    boots: BootGate | None,
    scan: ArchiveStats,
    rec: RunRecorder,
    res: RunResources,
) -> Obtained:
    guest_net = _lease_network(lease, rec) if lease is not None else None
    # The host-made disk is built from a private copy made by the descriptor
    # walk, never from the user's tree (see stage_workspace).
    with rec.timed("workspace_archive"):
        root = staging_root(scan.allocated, plan.run_dir)  # holes stay holes
        if root != plan.run_dir:
            res.path(root)  # a directory of its own
        staging, _ = await asyncio.to_thread(
            stage_workspace, plan.cwd, root, plan.limits.workspace_bytes
        )
        res.path(staging)
    # Hashed while the guest boots; done before the staged copy goes.
    manifest = ManifestJob.start(staging, res) if not plan.read_only_workspace else None

    def launched(guest: Guest) -> None:
        res.guest(guest)
        rec.set_guest(isolation=guest.isolation)
        rec.set_pool("miss")
        rec.add_artifact("plan", guest.plan_path.name)
        _copy_guest_timings(guest, rec)

    spec = GuestSpec(
        run_id=plan.run_id,
        run_dir=plan.run_dir,
        launch_seconds=plan.launch_seconds,
        network=lease.attachment if lease is not None else None,
        workspace=staging,
        console_log_bytes=plan.limits.console_log_bytes,
        image=plan.image,
        disk_mib=plan.disk_mib,
        vcpus=plan.vcpus,
        memory_mib=plan.memory_mib,
    )
    restored = await _try_restore(backend, spec, rec, res)
    if isinstance(restored, Greeted):
        greeted = restored
    else:
        rec.set_start("cold", fallback=restored)
        greeted = await _boot_greeted(backend, spec, boots, launched, rec, res)
    rec.timing("agent_connect_wait_ms", greeted.connect_ms)
    rec.timing("vm_ready_ms", greeted.ready_ms)
    rec.set_guest(
        isolation=greeted.guest.isolation,
        agent_version=greeted.info.agent_version,
        kernel=greeted.info.kernel,
    )
    # The copy is on the guest's disk now.
    taken = await manifest.result() if manifest is not None else None
    await asyncio.to_thread(remove_path, staging)
    if root != plan.run_dir:
        await asyncio.to_thread(remove_path, root)
    seeded = greeted.guest.facts.workspace_seeded
    start: Start = "restored" if greeted is restored else "cold"
    return Obtained(
        greeted.guest,
        greeted.client,
        guest_net,
        greeted.guest.plan_path,
        seeded,
        start=start,
        manifest=taken,
    )


async def _boot_greeted(
    backend: Backend,
    spec: GuestSpec,
    boots: BootGate | None,
    launched: Callable[[Guest], None],
    rec: RunRecorder,
    res: RunResources,
) -> Greeted:
    """Boot ``spec``'s guest (in turn, through ``boots``) and greet its agent."""
    async with boots.turn() if boots is not None else _no_wait() as waited_ms:
        rec.timing("boot_queue_ms", waited_ms)
        greeted = await boot_and_greet(backend, spec, launched)
        res.push(_closer(greeted.client))
    return greeted


async def _try_restore(
    backend: Backend, spec: GuestSpec, rec: RunRecorder, res: RunResources
) -> Greeted | str:
    """Resume ``spec``'s guest from the backend's snapshot and greet it, or say why
    not (see ``restore_and_greet``); the guest is the run's from its start."""
    restored = await restore_and_greet(backend, spec, res.guest)
    if isinstance(restored, str):
        return restored
    guest = restored.guest
    res.push(_closer(restored.client))
    rec.set_start("restored")
    rec.set_guest(isolation=guest.isolation)
    rec.set_pool("miss")
    rec.add_artifact("plan", guest.plan_path.name)
    _copy_guest_timings(guest, rec)
    restore_ms = guest.timings.get("restore_ms")
    if isinstance(restore_ms, int | float):
        rec.timing("restore_ms", float(restore_ms))
    return restored


def _lease_network(lease: Lease, rec: RunRecorder) -> GuestNetwork:
    """The agent's configure message for ``lease``'s eth0; records its policy resolution time."""
    if lease.policy_resolution_ms is not None:
        rec.timing("policy_resolution_ms", lease.policy_resolution_ms)
    return GuestNetwork(**dataclasses.asdict(lease.guest))


def _closer(client: AgentClient) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        with contextlib.suppress(Exception):
            await client.close()

    return close


def _copy_guest_timings(guest: Guest, rec: RunRecorder) -> None:
    timings = guest.timings
    for key in ("rootfs_prepare_ms", "workspace_disk_ms", "vmm_start_ms"):
        value = timings.get(key)
        if isinstance(value, int | float):
            rec.timing(key, float(value))
    rec.set_rootfs_method(guest.facts.rootfs_method)


@contextlib.asynccontextmanager
async def _no_wait() -> AsyncIterator[float]:
    yield 0.0
