"""One run, start to finish: network, guest, agent, workspace, command, teardown.

The runner is the only place that speaks the agent protocol on the host, so
command execution exists once for every backend. Whatever happens (success,
failure, timeout, cancellation) the guest and the run's network are destroyed
and a complete run record is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cleanroom.agent import (
    AgentClient,
    AgentDisconnected,
    AgentError,
    AgentRemoteError,
    ExitStatus,
    GuestNetwork,
)
from cleanroom.backends.base import Backend, Guest, GuestSpec, NetworkAttachment
from cleanroom.errors import (
    CleanroomError,
    GuestAgentFailed,
    RunCancelled,
    RuntimeLaunchFailed,
    RunTimeout,
)
from cleanroom.policy import CompiledPolicy
from cleanroom.service.boots import BootGate
from cleanroom.service.output import OutputCapture
from cleanroom.service.pool import SlotProvider, WarmGuest, WarmPool
from cleanroom.service.record import RunRecorder
from cleanroom.service.types import EventSink, RunExit, RunResult, RunStarted
from cleanroom.service.workspace import (
    PreparedArchive,
    prepare_archive,
    scan_workspace,
    stage_workspace,
    staging_root,
)

__all__ = [
    "WARM_STREAM_LIMIT",
    "Defer",
    "NetworkLease",
    "NetworkProvider",
    "RunPlan",
    "execute_run",
]

WARM_STREAM_LIMIT = 16 << 20
"""Workspaces larger than this (bytes) boot cold with a host-made disk instead of
taking a warm guest and streaming: streaming through the agent runs at a few
MiB/s under emulation, a cold boot with the disk costs a few seconds."""

EMPTY_TAR = bytes(1024)
"""An empty tar archive (two zero blocks)."""


class NetworkLease(Protocol):
    """A run's prepared network (see ``cleanroom.network.RunNetwork``)."""

    @property
    def attachment(self) -> NetworkAttachment: ...

    @property
    def guest(self) -> GuestNetwork: ...

    @property
    def timings(self) -> dict[str, float]: ...


class NetworkProvider(Protocol):
    """Sets up and tears down a run's network (see ``cleanroom.network.NetworkManager``)."""

    async def setup(self, run_id: str, policy: CompiledPolicy, run_dir: Path) -> Any: ...

    async def teardown(self, lease: Any) -> Any: ...


@dataclass(frozen=True)
class RunPlan:
    """What the service decided for one run."""

    run_id: str
    cleanroom_id: str
    backend_name: str
    command: tuple[str, ...]
    cwd: Path
    run_dir: Path
    policy: CompiledPolicy
    read_only_workspace: bool
    launch_seconds: float
    timeout: float | None = None


Defer = Callable[[str, Coroutine[Any, Any, None]], None]
"""Takes a finished run's finalizer (by run id) to run in the background."""


async def execute_run(
    plan: RunPlan,
    backend: Backend,
    network: NetworkProvider | None,
    on_event: EventSink | None,
    pool: WarmPool | None = None,
    boots: BootGate | None = None,
    defer: Defer | None = None,
) -> RunResult:
    """Run ``plan`` in a fresh guest and return its result.

    Raises ``RuntimeLaunchFailed``, ``GuestAgentFailed``, ``RunTimeout``,
    ``NetworkSetupFailed`` or ``RunCancelled`` (also when this task is
    cancelled, after cleanup). Cleanup always runs, shielded from cancellation.

    When the command exits, the guest's VMM is killed before the result is
    returned. Releasing the rest (reaping, disks, network, the final run
    record) then goes to ``defer`` if given (see ``cleanroom.service.finalize``);
    without it, it completes before this returns. Failed runs always clean up
    before raising.
    """
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    rec = RunRecorder(
        run_id=plan.run_id,
        cleanroom_id=plan.cleanroom_id,
        backend=plan.backend_name,
        policy_hash=plan.policy.policy_hash,
        command=list(plan.command),
        run_dir=plan.run_dir,
    )
    capture = OutputCapture(plan.run_dir, on_event)
    state = _RunState()
    try:
        if on_event is not None:
            await on_event(RunStarted(plan.run_id, plan.cleanroom_id, plan.run_dir))
        status = await _run_in_guest(plan, backend, network, pool, boots, rec, capture, state)
    except asyncio.CancelledError:
        await _shielded_cleanup(state, network, rec)
        capture.close()
        cancelled = RunCancelled("the run was cancelled", details={"run_id": plan.run_id})
        rec.finish(status="cancelled", error=_err_dict(cancelled))
        raise
    except CleanroomError as exc:
        await _shielded_cleanup(state, network, rec)
        capture.close()
        exc.details.setdefault("run_id", plan.run_id)
        exc.details.setdefault("run_dir", str(plan.run_dir))
        rec.finish(
            status="timeout" if isinstance(exc, RunTimeout) else "error", error=_err_dict(exc)
        )
        raise
    signame = status.signal_name
    if status.timed_out:
        await _shielded_cleanup(state, network, rec)
        capture.close()
        err = RunTimeout(
            f"the command did not finish within {plan.timeout} s and was killed",
            details={"run_id": plan.run_id, "run_dir": str(plan.run_dir)},
        )
        rec.finish(
            status="timeout", exit_code=status.exit_code, signal=signame, error=_err_dict(err)
        )
        raise err
    # The answer is complete: nothing of the run may execute past this point.
    if state.guest is not None:
        state.guest.kill()
    capture.close()
    rec.finish(status="exited", exit_code=status.exit_code, signal=signame, cleanup="pending")
    result = RunResult(
        run_id=plan.run_id,
        cleanroom_id=plan.cleanroom_id,
        exit_code=status.exit_code,
        stdout=capture.text("stdout"),
        stderr=capture.text("stderr"),
        run_dir=plan.run_dir,
        plan_path=state.plan_path or plan.run_dir / "plan.json",
        signal=signame,
        stdout_truncated=capture.truncated("stdout"),
        stderr_truncated=capture.truncated("stderr"),
    )
    finalizer = _finalize(state, network, rec)
    if defer is not None:
        defer(plan.run_id, finalizer)
    else:
        await finalizer
    if on_event is not None:
        await on_event(RunExit(result))
    return result


async def _finalize(state: _RunState, network: NetworkProvider | None, rec: RunRecorder) -> None:
    """Release a finished run's resources, then complete its record (``cleanup``)."""
    try:
        await _shielded_cleanup(state, network, rec)
    except Exception as exc:
        failure = exc if isinstance(exc, CleanroomError) else CleanroomError(repr(exc))
        rec.set(cleanup="failed", cleanup_error=_err_dict(failure))
        rec.write()
        raise
    rec.set(cleanup="done")
    rec.write()


class _RunState:
    """Resources a run holds, for cleanup."""

    def __init__(self) -> None:
        self.guest: Guest | None = None
        self.lease: Any = None
        self.client: AgentClient | None = None
        self.plan_path: Path | None = None
        self.archive: Path | None = None
        self.staging: Path | None = None
        self.staging_root: Path | None = None
        """A staging directory made for this run alone (removed with it)."""
        self.warm: WarmGuest | None = None
        self.pool: WarmPool | None = None
        self.run_dir: Path | None = None
        self.slot: Any = None
        """A pooled guest's network slot not (yet) activated for this run."""
        self.slot_provider: SlotProvider | None = None


async def _run_in_guest(
    plan: RunPlan,
    backend: Backend,
    network: NetworkProvider | None,
    pool: WarmPool | None,
    boots: BootGate | None,
    rec: RunRecorder,
    capture: OutputCapture,
    state: _RunState,
) -> ExitStatus:
    t = time.monotonic()
    scan = await asyncio.to_thread(scan_workspace, plan.cwd)
    rec.timing("workspace_scan_ms", (time.monotonic() - t) * 1000)
    needs_nic = network is not None and bool(plan.policy.allow)
    guest_net: GuestNetwork | None = None
    # A pooled guest has an empty workspace disk, so its workspace is streamed
    # through the agent; above a size where a cold boot with a host-made disk
    # is faster than that stream, skip the pool. A run that needs a NIC can only
    # use a guest booted on a reserved network slot.
    warm = None
    slots = pool.network if pool is not None else None
    if pool is not None and scan.bytes <= WARM_STREAM_LIMIT and (not needs_nic or slots):
        warm = pool.take()
    if warm is not None and pool is not None:
        guest, client = await _claim_warm(pool, warm, plan, rec, state)
        if warm.slot is not None and slots is not None:
            state.slot, state.slot_provider = warm.slot, slots
        if needs_nic and slots is not None:
            # The slot dropped everything since boot; now it gets this run's policy.
            t = time.monotonic()
            state.lease = await slots.activate(warm.slot, plan.run_id, plan.policy, plan.run_dir)
            state.slot = None  # the lease owns the namespace now
            rec.timing("network_setup_ms", (time.monotonic() - t) * 1000)
            guest_net = _lease_network(state.lease, rec)
        else:
            # Any NIC stays behind the slot's drop-all table: nothing passes.
            rec.set(network={"mode": "none", "allowed": 0, "blocked": 0})
    else:
        attachment: NetworkAttachment | None = None
        if network is not None and needs_nic:
            t = time.monotonic()
            state.lease = await network.setup(plan.run_id, plan.policy, plan.run_dir)
            rec.timing("network_setup_ms", (time.monotonic() - t) * 1000)
            attachment = state.lease.attachment
            guest_net = _lease_network(state.lease, rec)
        else:
            rec.set(network={"mode": "none", "allowed": 0, "blocked": 0})
        # The host-made disk is built from a private copy made by the
        # descriptor walk, never from the user's tree (see stage_workspace).
        t = time.monotonic()
        root = staging_root(scan.bytes, plan.run_dir)
        state.staging_root = root if root != plan.run_dir else None  # a directory of its own
        state.staging, _ = await asyncio.to_thread(stage_workspace, plan.cwd, root)
        rec.timing("workspace_archive_ms", (time.monotonic() - t) * 1000)
        async with boots.turn() if boots is not None else _no_wait() as waited_ms:
            rec.timing("boot_queue_ms", waited_ms)
            guest, client = await _boot_cold(plan, backend, attachment, state.staging, rec, state)
        await _discard_staging(state)  # it is on the disk now
    seeded = warm is None and bool(guest.timings.get("workspace_seeded"))

    # The archive is made while the guest handles configure.
    archiving: asyncio.Future[PreparedArchive] | None = None
    if not seeded:
        archiving = asyncio.ensure_future(prepare_archive(plan.cwd, scan.bytes, plan.run_dir))
        archiving.add_done_callback(lambda f: _note_archive(f, state))
    try:
        t = time.monotonic()
        await client.configure(entropy_seed=os.urandom(64), network=guest_net)
        rec.timing("configure_ms", (time.monotonic() - t) * 1000)
        t = time.monotonic()
        extracted = refused = archive_bytes = 0
        if archiving is None:
            # Already on the guest's disk. Only a read-only workspace needs the
            # agent: an empty stream makes it apply the read-only bind mount.
            if plan.read_only_workspace:
                ws = await client.send_workspace([EMPTY_TAR], read_only=True)
                extracted, refused = ws.files, ws.skipped
        else:
            prepared = await archiving
            rec.timing("workspace_archive_ms", prepared.archive_ms)
            archive_bytes = prepared.stats.archive_bytes
            ws = await client.send_workspace(prepared.chunks, read_only=plan.read_only_workspace)
            extracted, refused = ws.files, ws.skipped
            if prepared.path is not None:
                _remove(prepared.path)
        rec.timing("workspace_transfer_ms", (time.monotonic() - t) * 1000)
        rec.set(
            workspace={
                "method": "disk" if seeded else "stream",
                "files": scan.files,
                "bytes": scan.bytes,
                "archive_bytes": archive_bytes,
                "skipped": list(scan.skipped),
                "extracted_files": extracted,
                "refused": refused,
                "read_only": plan.read_only_workspace,
            }
        )
        t = time.monotonic()
        status = await client.exec(
            list(plan.command),
            timeout=plan.timeout,
            on_output=capture.write,
        )
        rec.timing("command_ms", (time.monotonic() - t) * 1000)
    except AgentDisconnected as exc:
        code = guest.exited()
        why = f"the VMM exited (status {code})" if code is not None else "the agent channel closed"
        raise GuestAgentFailed(
            f"lost the guest during the run: {why}",
            details={"console_tail": guest.console_tail()},
        ) from exc
    except AgentRemoteError as exc:
        raise GuestAgentFailed(
            f"the guest agent reported an error: {exc}", details={"agent_code": exc.code}
        ) from exc
    except AgentError as exc:
        raise GuestAgentFailed(f"guest agent protocol failure: {exc}") from exc
    finally:
        if archiving is not None and not archiving.done():
            # Let the archiving thread finish before cleanup removes its file.
            with contextlib.suppress(BaseException):
                await asyncio.shield(archiving)
    return status


def _note_archive(done: asyncio.Future[PreparedArchive], state: _RunState) -> None:
    """Remember an archive file for cleanup as soon as it exists."""
    if not done.cancelled() and done.exception() is None:
        state.archive = done.result().path


def _lease_network(lease: Any, rec: RunRecorder) -> GuestNetwork:
    """The guest's network settings of ``lease``; records its policy resolution time."""
    resolution = lease.timings.get("policy_resolution_ms")
    if resolution is not None:
        rec.timing("policy_resolution_ms", resolution)
    net: GuestNetwork = lease.guest
    return net


async def _boot_cold(
    plan: RunPlan,
    backend: Backend,
    attachment: NetworkAttachment | None,
    seed: Path | None,
    rec: RunRecorder,
    state: _RunState,
) -> tuple[Guest, AgentClient]:
    loop = asyncio.get_running_loop()
    spec = GuestSpec(
        run_id=plan.run_id,
        run_dir=plan.run_dir,
        launch_seconds=plan.launch_seconds,
        network=attachment,
        workspace=seed,
    )
    launch_start = loop.time()
    deadline = launch_start + plan.launch_seconds
    state.guest = guest = await backend.launch(spec)
    state.plan_path = guest.plan_path
    rec.set(isolation=guest.isolation, pool="miss")
    rec.data["artifacts"]["plan"] = guest.plan_path.name
    _copy_guest_timings(guest, rec)

    reader, writer = await guest.open_channel(deadline)
    rec.timing("agent_connect_wait_ms", (loop.time() - launch_start) * 1000)
    client = state.client = AgentClient(reader, writer)
    try:
        info = await client.hello(timeout=max(0.1, deadline - loop.time()))
    except (AgentError, TimeoutError) as exc:
        raise _launch_failed(guest, plan, f"the guest agent did not answer: {exc}") from exc
    rec.timing("vm_ready_ms", (loop.time() - launch_start) * 1000)
    rec.set(guest={"agent_version": info.agent_version, "kernel": info.kernel})
    return guest, client


async def _claim_warm(
    pool: WarmPool, warm: WarmGuest, plan: RunPlan, rec: RunRecorder, state: _RunState
) -> tuple[Guest, AgentClient]:
    """Adopt a pooled guest: its artifacts move into the run directory at cleanup."""
    state.warm = warm
    state.pool = pool
    state.guest = warm.guest
    state.client = warm.client
    state.run_dir = plan.run_dir
    plan_copy = plan.run_dir / warm.guest.plan_path.name
    await asyncio.to_thread(shutil.copyfile, warm.guest.plan_path, plan_copy)
    state.plan_path = plan_copy
    rec.data["artifacts"]["plan"] = plan_copy.name
    rec.set(
        isolation=warm.guest.isolation,
        pool="hit",
        pool_guest={
            "boot_ms": round(warm.boot_ms, 1),
            "idle_ms": round((time.monotonic() - warm.ready_at) * 1000, 1),
        },
        guest={"agent_version": warm.agent_version, "kernel": warm.kernel},
    )
    _copy_guest_timings(warm.guest, rec)
    rec.timing("vm_ready_ms", 0.0)
    rec.timing("agent_connect_wait_ms", 0.0)
    return warm.guest, warm.client


@contextlib.asynccontextmanager
async def _no_wait() -> AsyncIterator[float]:
    yield 0.0


def _launch_failed(guest: Guest, plan: RunPlan, message: str) -> RuntimeLaunchFailed:
    return RuntimeLaunchFailed(
        message,
        details={
            "launch_seconds": plan.launch_seconds,
            "console_tail": guest.console_tail(),
        },
    )


def _copy_guest_timings(guest: Guest, rec: RunRecorder) -> None:
    timings = dict(guest.timings)
    for key in ("rootfs_prepare_ms", "workspace_disk_ms", "vmm_start_ms"):
        value = timings.get(key)
        if isinstance(value, int | float):
            rec.timing(key, float(value))
    method = timings.get("rootfs_method")
    if method is not None:
        rec.set(rootfs_method=str(method))
    if "pool" in timings:
        rec.set(pool=str(timings["pool"]))


async def _shielded_cleanup(
    state: _RunState, network: NetworkProvider | None, rec: RunRecorder
) -> None:
    """Destroy the guest and the network even if the calling task is being cancelled."""
    task = asyncio.ensure_future(_cleanup(state, network, rec))
    # Keep waiting through repeated cancellation: leaking a VMM is worse than a slow cancel.
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()


async def _cleanup(state: _RunState, network: NetworkProvider | None, rec: RunRecorder) -> None:
    if state.client is not None:
        with contextlib.suppress(Exception):
            await state.client.close()
    if state.guest is not None:
        t = time.monotonic()
        await state.guest.destroy()
        rec.timing("guest_teardown_ms", (time.monotonic() - t) * 1000)
        state.guest = None
    if state.warm is not None:
        # A pooled guest lived in its own directory: keep its console log with the run.
        console = state.warm.guest.console_path
        with contextlib.suppress(OSError):
            await asyncio.to_thread(shutil.copyfile, console, rec.run_dir / console.name)
        state.warm.discard_dir()
        state.warm = None
        if state.pool is not None:
            state.pool.released()
    if state.slot is not None and state.slot_provider is not None:
        # Released with the guest; it never carried this run's traffic, so no record.
        await state.slot_provider.teardown(state.slot)
        state.slot = None
    if state.lease is not None and network is not None:
        t = time.monotonic()
        summary = await network.teardown(state.lease)
        rec.timing("network_cleanup_ms", (time.monotonic() - t) * 1000)
        rec.set(network=_summary_dict(summary))
        state.lease = None
    if state.archive is not None:
        _remove(state.archive)
    await _discard_staging(state)


async def _discard_staging(state: _RunState) -> None:
    if state.staging is not None:
        await asyncio.to_thread(shutil.rmtree, state.staging, ignore_errors=True)
        state.staging = None
    if state.staging_root is not None:
        await asyncio.to_thread(shutil.rmtree, state.staging_root, ignore_errors=True)
        state.staging_root = None


def _summary_dict(summary: Any) -> dict[str, Any]:
    if hasattr(summary, "to_dict"):
        value = summary.to_dict()
        if isinstance(value, dict):
            return value
    return {"summary": str(summary)}


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _err_dict(exc: CleanroomError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message}
