"""One Firecracker microVM: config file, process, hybrid-vsock agent stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cleanroom.backends.base import GuestSpec, Isolation
from cleanroom.backends.firecracker.config import (
    API_SOCKET_NAME,
    CONFIG_FILE_NAME,
    VSOCK_SOCKET_NAME,
    FirecrackerLaunch,
    build_argv,
    build_config,
)
from cleanroom.backends.firecracker.vsock import (
    HybridVsockError,
    HybridVsockTimeout,
    connect_hybrid_vsock,
)
from cleanroom.backends.process import VmmProcess, console_tail, pdeathsig_prefix
from cleanroom.backends.rootfs import RootfsMethod, prepare_rootfs, remove_rootfs
from cleanroom.backends.workspace_disk import create_workspace_disk, remove_workspace_disk
from cleanroom.errors import RuntimeLaunchFailed

__all__ = ["FIRECRACKER_ROOTFS_METHODS", "FirecrackerGuest", "FirecrackerMachine"]

FIRECRACKER_ROOTFS_METHODS: tuple[RootfsMethod, ...] = ("reflink", "copy")
"""Firecracker opens raw disks only, so no qcow2 overlay."""


@dataclass(frozen=True)
class FirecrackerMachine:
    """The host-side inputs of a Firecracker guest."""

    binary: str
    vmlinux: Path
    initrd: Path
    rootfs: Path
    vcpus: int = 1
    memory_mib: int = 256
    guest_cid: int = 3
    debug: bool = False


class FirecrackerGuest:
    """A running Firecracker guest; implements ``cleanroom.backends.base.Guest``."""

    def __init__(
        self,
        *,
        spec: GuestSpec,
        process: VmmProcess,
        agent_port: int,
        timings: dict[str, Any],
    ) -> None:
        self._spec = spec
        self._process = process
        self._agent_port = agent_port
        self._timings = timings
        self._spawned_at = time.monotonic()
        self._writer: asyncio.StreamWriter | None = None
        self._destroyed = False

    @classmethod
    async def start(cls, machine: FirecrackerMachine, spec: GuestSpec) -> FirecrackerGuest:
        """Prepare the disk, write config and plan, spawn Firecracker.

        Raises ``RuntimeLaunchFailed``; on failure the per-run disk is removed.
        """
        run_dir = spec.run_dir
        rootfs = await asyncio.to_thread(
            prepare_rootfs, machine.rootfs, run_dir, FIRECRACKER_ROOTFS_METHODS
        )
        try:
            ws_disk = await asyncio.to_thread(create_workspace_disk, run_dir, spec.workspace)
        except BaseException:
            remove_rootfs(run_dir)
            raise
        try:
            launch = FirecrackerLaunch(
                vmlinux=machine.vmlinux,
                initrd=machine.initrd,
                rootfs=rootfs.path,
                vcpus=machine.vcpus,
                memory_mib=machine.memory_mib,
                guest_cid=machine.guest_cid,
                network=spec.network,
                workspace_disk=ws_disk.path,
                debug=machine.debug,
            )
            config = build_config(launch)
            (run_dir / CONFIG_FILE_NAME).write_text(json.dumps(config, indent=2) + "\n")
            argv = build_argv(machine.binary, spec.network, prefix=pdeathsig_prefix())
            plan = {
                "backend": "firecracker",
                "run_id": spec.run_id,
                "isolation": "firecracker-kvm",
                "argv": argv,
                "cwd": str(run_dir),
                "config_file": str(run_dir / CONFIG_FILE_NAME),
                "config": config,
                "rootfs": {
                    "path": str(rootfs.path),
                    "method": rootfs.method,
                    "base": str(machine.rootfs),
                },
            }
            (run_dir / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
            for stale in (API_SOCKET_NAME, VSOCK_SOCKET_NAME):
                (run_dir / stale).unlink(missing_ok=True)
            process = VmmProcess.spawn(
                argv,
                stdout=run_dir / "console.log",
                stderr=run_dir / "vmm.log",
                cwd=run_dir,
            )
        except BaseException as exc:
            remove_rootfs(run_dir)
            remove_workspace_disk(run_dir)
            if isinstance(exc, OSError):
                raise RuntimeLaunchFailed(f"could not start Firecracker: {exc}") from exc
            raise
        timings: dict[str, Any] = {
            "rootfs_method": rootfs.method,
            "rootfs_prepare_ms": rootfs.prepare_ms,
            "vmm_start_ms": process.start_ms,
            "workspace_disk_ms": ws_disk.prepare_ms,
            "workspace_seeded": ws_disk.seeded,
        }
        return cls(spec=spec, process=process, agent_port=launch.agent_port, timings=timings)

    @property
    def isolation(self) -> Isolation:
        return "firecracker-kvm"

    @property
    def plan_path(self) -> Path:
        return self._spec.run_dir / "plan.json"

    @property
    def console_path(self) -> Path:
        return self._spec.run_dir / "console.log"

    @property
    def timings(self) -> Mapping[str, Any]:
        return MappingProxyType(dict(self._timings))

    @property
    def pid(self) -> int:
        """The Firecracker process id."""
        return self._process.pid

    def console_tail(self, lines: int = 20) -> list[str]:
        return console_tail(self.console_path, lines)

    def exited(self) -> int | None:
        return self._process.exited()

    def _failed(self, message: str) -> RuntimeLaunchFailed:
        return RuntimeLaunchFailed(
            message,
            details={
                "run_id": self._spec.run_id,
                "console_tail": self.console_tail(),
                "vmm_log_tail": console_tail(self._spec.run_dir / "vmm.log", 10),
                "exit_status": self._process.exited(),
            },
        )

    async def open_channel(
        self, deadline: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._destroyed or self._writer is not None:
            raise RuntimeLaunchFailed(
                "guest destroyed or channel already opened", details={"run_id": self._spec.run_id}
            )
        try:
            reader, writer = await connect_hybrid_vsock(
                self._spec.run_dir / VSOCK_SOCKET_NAME,
                self._agent_port,
                deadline,
                vmm_alive=lambda: self._process.exited() is None,
            )
        except HybridVsockTimeout as exc:
            raise self._failed(
                f"guest agent not ready within {self._spec.launch_seconds:g} s ({exc.last_error})"
            ) from exc
        except HybridVsockError as exc:
            await self._process.wait_exit(1.0)
            raise self._failed(f"guest agent channel failed: {exc}") from exc
        self._timings["channel_ready_ms"] = round((time.monotonic() - self._spawned_at) * 1000, 3)
        self._writer = writer
        return reader, writer

    async def destroy(self) -> None:
        """Kill Firecracker by PID, reap it, remove its sockets and the per-run disk."""
        self._destroyed = True
        await self._process.kill()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, RuntimeError):
                await self._writer.wait_closed()
        for name in (API_SOCKET_NAME, VSOCK_SOCKET_NAME):
            (self._spec.run_dir / name).unlink(missing_ok=True)
        remove_rootfs(self._spec.run_dir)
        remove_workspace_disk(self._spec.run_dir)
