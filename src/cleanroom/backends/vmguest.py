"""What every VMM-backed guest shares: its per-run disks, its VMM process, the
agent stream's writer, launch timings, and failure details.

A run directory holds ``plan.json`` (the launch plan), ``console.log`` (the
guest console) and ``vmm.log`` (the VMM's own messages), whatever the VMM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cleanroom.backends.base import Guest, GuestFacts, GuestSpec
from cleanroom.backends.process import VmmProcess, console_tail
from cleanroom.backends.rootfs import RootfsCopy, RootfsMethod, prepare_rootfs, remove_rootfs
from cleanroom.backends.workspace_disk import (
    DEFAULT_WORKSPACE_DISK_BYTES,
    ScratchDisk,
    WorkspaceDisk,
    copy_scratch_disk,
    create_blank_workspace_disk,
    create_scratch_disk,
    create_workspace_disk,
    remove_scratch_disk,
    remove_workspace_disk,
)
from cleanroom.errors import ImageUnavailable, RuntimeLaunchFailed

__all__ = [
    "CONSOLE_LOG_NAME",
    "PLAN_FILE_NAME",
    "VMM_LOG_NAME",
    "RunDisks",
    "VmGuest",
    "boot_canary",
    "run_disks",
    "write_plan",
]

PLAN_FILE_NAME = "plan.json"
CONSOLE_LOG_NAME = "console.log"
VMM_LOG_NAME = "vmm.log"


@dataclass(frozen=True)
class RunDisks:
    """One run's private disks: the rootfs copy, the workspace disk and, with a user
    image, the scratch disk holding its writable layer."""

    rootfs: RootfsCopy
    workspace: WorkspaceDisk
    scratch: ScratchDisk | None = None


@contextlib.asynccontextmanager
async def run_disks(
    spec: GuestSpec,
    base_rootfs: Path,
    methods: Sequence[RootfsMethod],
    *,
    vmm: str,
    qemu_img: str = "qemu-img",
    blank_workspace: bool = False,
    base_scratch: Path | None = None,
) -> AsyncIterator[RunDisks]:
    """Make the run's rootfs copy, workspace disk and (for ``spec.image``) scratch
    disk in ``spec.run_dir`` for the block that starts ``vmm`` on them; the
    writable ones are ``spec.disk_mib`` MiB, sparse. If the block raises, every
    disk is removed again.

    Raises ``ImageUnavailable`` if the user image's file is gone, and
    ``RuntimeLaunchFailed``: making a disk failed, or the block raised an
    ``OSError`` (writing the plan, say); anything else the block raises passes as is.

    ``blank_workspace``: the workspace disk is a blank file the caller fills in
    place later (``fill_workspace_disk``), so the VMM can start meanwhile.
    ``base_scratch``: the scratch disk is a copy of this one (a snapshot's; see
    ``copy_scratch_disk``) instead of a new one.
    """
    run_dir = spec.run_dir
    if spec.image is not None and not spec.image.rootfs.is_file():
        raise ImageUnavailable(
            f"the user image {spec.image.source} has no root filesystem file",
            details={"key": spec.image.key, "path": str(spec.image.rootfs)},
        )
    size = DEFAULT_WORKSPACE_DISK_BYTES if spec.disk_mib is None else spec.disk_mib << 20
    rootfs = await asyncio.to_thread(
        prepare_rootfs, base_rootfs, run_dir, methods, qemu_img=qemu_img
    )
    try:
        if blank_workspace and spec.workspace is not None:
            workspace = await asyncio.to_thread(create_blank_workspace_disk, run_dir, size)
        else:
            workspace = await asyncio.to_thread(
                create_workspace_disk, run_dir, spec.workspace, size
            )
        scratch = None
        if spec.image is not None and base_scratch is not None:
            scratch = await asyncio.to_thread(copy_scratch_disk, run_dir, base_scratch, qemu_img)
        elif spec.image is not None:
            scratch = await asyncio.to_thread(create_scratch_disk, run_dir, spec.image.config, size)
    except BaseException:
        _remove_run_disks(run_dir)
        raise
    try:
        yield RunDisks(rootfs, workspace, scratch)
    except OSError as exc:
        _remove_run_disks(run_dir)
        raise RuntimeLaunchFailed(f"could not start {vmm}: {exc}") from exc
    except BaseException:
        _remove_run_disks(run_dir)
        raise


def write_plan(
    spec: GuestSpec,
    disks: RunDisks,
    base_rootfs: Path,
    *,
    backend: str,
    isolation: str,
    argv: Sequence[str],
    **extra: Any,
) -> None:
    """Write the run's ``plan.json``: backend, run id, isolation, the exact argv,
    the VMM-specific ``extra`` entries, how the rootfs copy was made and, for a
    user image, which image is attached (read-only)."""
    plan = {
        "backend": backend,
        "run_id": spec.run_id,
        "isolation": isolation,
        "argv": list(argv),
        **extra,
        "rootfs": {
            "path": str(disks.rootfs.path),
            "method": disks.rootfs.method,
            "base": str(base_rootfs),
        },
    }
    if spec.image is not None:
        plan["image"] = {
            "key": spec.image.key,
            "source": spec.image.source,
            "path": str(spec.image.rootfs),
            "read_only": True,
        }
    (spec.run_dir / PLAN_FILE_NAME).write_text(json.dumps(plan, indent=2) + "\n")


def _remove_run_disks(run_dir: Path) -> None:
    remove_rootfs(run_dir)
    remove_workspace_disk(run_dir)
    remove_scratch_disk(run_dir)


class VmGuest:
    """The VMM-independent half of a ``cleanroom.backends.base.Guest``.

    Subclasses add ``isolation`` and ``open_channel`` (which calls
    ``_channel_opened``), and release their own VMM handles in
    ``_release_vmm_handles``.
    """

    def __init__(self, *, spec: GuestSpec, process: VmmProcess, disks: RunDisks) -> None:
        self._spec = spec
        self._process = process
        self._disks = disks
        self._facts = GuestFacts(
            rootfs_method=disks.rootfs.method, workspace_seeded=disks.workspace.seeded
        )
        self._timings: dict[str, float] = {
            "rootfs_prepare_ms": disks.rootfs.prepare_ms,
            "vmm_start_ms": process.start_ms,
            "workspace_disk_ms": disks.workspace.prepare_ms,
        }
        if disks.scratch is not None:
            self._timings["scratch_disk_ms"] = disks.scratch.prepare_ms
        self._spawned_at = time.monotonic()
        self._writer: asyncio.StreamWriter | None = None
        self._destroyed = False

    @property
    def plan_path(self) -> Path:
        return self._spec.run_dir / PLAN_FILE_NAME

    @property
    def console_path(self) -> Path:
        return self._spec.run_dir / CONSOLE_LOG_NAME

    @property
    def facts(self) -> GuestFacts:
        return self._facts

    @property
    def timings(self) -> Mapping[str, float]:
        return MappingProxyType(self._timings)

    @property
    def pid(self) -> int:
        """The VMM's process id."""
        return self._process.pid

    def console_tail(self, lines: int = 20) -> list[str]:
        return console_tail(self.console_path, lines)

    def exited(self) -> int | None:
        return self._process.exited()

    def _failed(self, message: str, **details: Any) -> RuntimeLaunchFailed:
        """A launch failure carrying the console and VMM log tails and exit status."""
        return RuntimeLaunchFailed(
            message,
            details={
                "run_id": self._spec.run_id,
                "console_tail": self.console_tail(),
                "vmm_log_tail": console_tail(self._spec.run_dir / VMM_LOG_NAME, 10),
                "exit_status": self._process.exited(),
                **details,
            },
        )

    def _check_channel_unopened(self) -> None:
        """``RuntimeLaunchFailed`` if the guest is destroyed or its channel was handed out."""
        if self._destroyed:
            raise RuntimeLaunchFailed("guest was destroyed", details={"run_id": self._spec.run_id})
        if self._writer is not None:
            raise RuntimeLaunchFailed(
                "agent channel already opened", details={"run_id": self._spec.run_id}
            )

    def _channel_opened(self, writer: asyncio.StreamWriter) -> None:
        """Record the agent stream (closed by ``destroy``) and when it became ready."""
        self._timings["channel_ready_ms"] = round((time.monotonic() - self._spawned_at) * 1000, 3)
        self._writer = writer

    async def _release_vmm_handles(self) -> None:
        """Close or remove what only this VMM has (monitor sockets etc.); idempotent."""

    def kill(self) -> None:
        """See ``Guest.kill``."""
        self._process.send_kill()

    async def destroy(self) -> None:
        """Kill the VMM by PID, reap it, release its handles and the agent stream,
        and remove the per-run disks; safe to call at any time, repeatedly."""
        self._destroyed = True
        await self._process.kill()
        await self._release_vmm_handles()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, RuntimeError):
                await self._writer.wait_closed()
            self._writer = None
        _remove_run_disks(self._spec.run_dir)


async def boot_canary(
    start: Callable[[GuestSpec], Awaitable[Guest]], *, name: str, label: str, seconds: float
) -> tuple[bool, str]:
    """Boot one throwaway guest (run id ``name``, in a temporary run directory)
    until its agent channel opens, within ``seconds``.

    Returns ``(True, how long it took)`` or ``(False, why not)``, the reason
    naming ``label`` and the last console or VMM log line. The guest and its
    directory are always removed. Errors other than ``RuntimeLaunchFailed`` propagate.
    """
    run_dir = Path(tempfile.mkdtemp(prefix=f"cleanroom-{name}-"))
    guest: Guest | None = None
    started = time.monotonic()
    try:
        guest = await start(GuestSpec(name, run_dir, seconds))
        loop = asyncio.get_running_loop()
        await guest.open_channel(loop.time() + seconds)
    except RuntimeLaunchFailed as exc:
        tail = exc.details.get("console_tail") or exc.details.get("vmm_log_tail") or []
        last = f" (last output: {tail[-1]})" if tail else ""
        return False, f"{label} canary failed: {exc.message}{last}"
    else:
        ms = round((time.monotonic() - started) * 1000)
        return True, f"guest agent ready under {label} in {ms} ms"
    finally:
        if guest is not None:
            await guest.destroy()
        shutil.rmtree(run_dir, ignore_errors=True)
