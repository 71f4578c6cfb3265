"""One Firecracker microVM: config file, process, hybrid-vsock agent stream."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace

from cleanroom.backends.base import GuestSpec, Isolation
from cleanroom.backends.console import ConsoleLog
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
        self,
        *,
        spec: GuestSpec,
        process: VmmProcess,
        disks: RunDisks,
        agent_port: int,
        console: ConsoleLog | None = None,
    ) -> None:
        super().__init__(spec=spec, process=process, disks=disks)
        self._agent_port = agent_port
        self._console = console

    @classmethod
    async def start(cls, machine: FirecrackerMachine, spec: GuestSpec) -> FirecrackerGuest:
        """Prepare the disk, write config and plan, spawn Firecracker.

        Firecracker writes the guest's serial console to its stdout, which is a
        bounded reader's socket (:class:`~cleanroom.backends.console.ConsoleLog`):
        ``console.log`` keeps at most ``spec.console_log_bytes``. Raises
        ``RuntimeLaunchFailed``; on failure the per-run disk is removed.
        """
        console = ConsoleLog(spec.run_dir / CONSOLE_LOG_NAME, spec.console_log_bytes)
        try:
            process, disks, port = await cls._spawn(machine, spec, console)
        except BaseException:
            console.close()
            raise
        return cls(spec=spec, process=process, disks=disks, agent_port=port, console=console)

    @classmethod
    async def _spawn(
        cls, machine: FirecrackerMachine, spec: GuestSpec, console: ConsoleLog
    ) -> tuple[VmmProcess, RunDisks, int]:
        run_dir = spec.run_dir
        base = machine.launch.rootfs
        async with run_disks(spec, base, FIRECRACKER_ROOTFS_METHODS, vmm="Firecracker") as disks:
            launch = replace(
                machine.launch,
                rootfs=disks.rootfs.path,
                # A run may ask for its own guest shape (the policy's resources).
                vcpus=spec.vcpus or machine.launch.vcpus,
                memory_mib=spec.memory_mib or machine.launch.memory_mib,
                network=spec.network,
                workspace_disk=disks.workspace.path,
                image_disk=None if spec.image is None else spec.image.rootfs,
                scratch_disk=None if disks.scratch is None else disks.scratch.path,
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
                console=f"stdout (socketpair, kept up to {spec.console_log_bytes} bytes)",
            )
            for stale in (API_SOCKET_NAME, VSOCK_SOCKET_NAME):
                (run_dir / stale).unlink(missing_ok=True)
            (run_dir / CONSOLE_LOG_NAME).touch()
            process = VmmProcess.spawn(
                argv,
                stdout=console.vmm_fd,
                stderr=run_dir / VMM_LOG_NAME,
                cwd=run_dir,
            )
            console.start()
        return process, disks, launch.agent_port

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
        """Stop the console reader; remove Firecracker's API and vsock sockets."""
        if self._console is not None:
            await asyncio.to_thread(self._console.close)
            self._console = None
        for name in (API_SOCKET_NAME, VSOCK_SOCKET_NAME):
            (self._spec.run_dir / name).unlink(missing_ok=True)
