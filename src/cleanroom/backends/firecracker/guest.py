"""One Firecracker microVM: config file, process, hybrid-vsock agent stream."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace

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
from cleanroom.backends.process import VmmProcess, pdeathsig_prefix
from cleanroom.backends.rootfs import RootfsMethod
from cleanroom.backends.vmguest import (
    CONSOLE_LOG_NAME,
    VMM_LOG_NAME,
    RunDisks,
    VmGuest,
    run_disks,
    write_plan,
)

__all__ = ["FIRECRACKER_ROOTFS_METHODS", "FirecrackerGuest", "FirecrackerMachine"]

FIRECRACKER_ROOTFS_METHODS: tuple[RootfsMethod, ...] = ("reflink", "copy")
"""Firecracker opens raw disks only, so no qcow2 overlay."""


@dataclass(frozen=True)
class FirecrackerMachine:
    """The host-side inputs of a Firecracker guest: its binary, and the launch every
    guest starts from (``launch.rootfs`` is the read-only base each run copies)."""

    binary: str
    launch: FirecrackerLaunch


class FirecrackerGuest(VmGuest):
    """A running Firecracker guest; implements ``cleanroom.backends.base.Guest``."""

    def __init__(
        self, *, spec: GuestSpec, process: VmmProcess, disks: RunDisks, agent_port: int
    ) -> None:
        super().__init__(spec=spec, process=process, disks=disks)
        self._agent_port = agent_port

    @classmethod
    async def start(cls, machine: FirecrackerMachine, spec: GuestSpec) -> FirecrackerGuest:
        """Prepare the disk, write config and plan, spawn Firecracker.

        Raises ``RuntimeLaunchFailed``; on failure the per-run disk is removed.
        """
        run_dir = spec.run_dir
        base = machine.launch.rootfs
        async with run_disks(spec, base, FIRECRACKER_ROOTFS_METHODS, vmm="Firecracker") as disks:
            launch = replace(
                machine.launch,
                rootfs=disks.rootfs.path,
                network=spec.network,
                workspace_disk=disks.workspace.path,
            )
            config = build_config(launch)
            (run_dir / CONFIG_FILE_NAME).write_text(json.dumps(config, indent=2) + "\n")
            argv = build_argv(machine.binary, spec.network, prefix=pdeathsig_prefix())
            write_plan(
                spec,
                disks,
                base,
                backend="firecracker",
                isolation="firecracker-kvm",
                argv=argv,
                cwd=str(run_dir),
                config_file=str(run_dir / CONFIG_FILE_NAME),
                config=config,
            )
            for stale in (API_SOCKET_NAME, VSOCK_SOCKET_NAME):
                (run_dir / stale).unlink(missing_ok=True)
            process = VmmProcess.spawn(
                argv,
                stdout=run_dir / CONSOLE_LOG_NAME,
                stderr=run_dir / VMM_LOG_NAME,
                cwd=run_dir,
            )
        return cls(spec=spec, process=process, disks=disks, agent_port=launch.agent_port)

    @property
    def isolation(self) -> Isolation:
        return "firecracker-kvm"

    async def open_channel(
        self, deadline: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self._check_channel_unopened()
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
        self._channel_opened(writer)
        return reader, writer

    async def _release_vmm_handles(self) -> None:
        """Remove Firecracker's API and vsock sockets from the run directory."""
        for name in (API_SOCKET_NAME, VSOCK_SOCKET_NAME):
            (self._spec.run_dir / name).unlink(missing_ok=True)
