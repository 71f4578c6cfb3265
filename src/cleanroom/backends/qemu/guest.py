"""One QEMU microVM: start it, wait for its agent port, hand over the stream, kill it.

Readiness is the guest agent opening its virtio-serial port, observed through
QMP (``query-chardev`` ``frontend-open``), not merely QEMU having started; bytes
written to the channel before that wait in QEMU until the agent reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Self

from cleanroom.backends.base import GuestSpec, Isolation
from cleanroom.backends.console import ConsoleLog
from cleanroom.backends.process import VmmProcess, pdeathsig_prefix
from cleanroom.backends.qemu.argv import (
    AGENT_CHARDEV,
    SANDBOX,
    Accel,
    QemuLaunch,
    QemuMachine,
    build_argv,
)
from cleanroom.backends.qemu.pidns import new_pid_namespace
from cleanroom.backends.qemu.privilege import (
    FdHandover,
    VmmUser,
    drop_prefix,
    kvm_groups,
    open_tap,
    write_mask_fstab,
)
from cleanroom.backends.qemu.qmp import QmpClient, QmpClosed
from cleanroom.backends.rootfs import RootfsMethod
from cleanroom.backends.vmguest import (
    CONSOLE_LOG_NAME,
    VMM_LOG_NAME,
    RunDisks,
    VmGuest,
    run_disks,
    write_plan,
)
from cleanroom.errors import RuntimeLaunchFailed

__all__ = ["QEMU_ROOTFS_METHODS", "QemuGuest", "QemuMachine"]

QEMU_ROOTFS_METHODS: tuple[RootfsMethod, ...] = ("reflink", "qcow2-overlay", "copy")
"""Measured on ext4 (no reflink): qcow2 overlay 7-15 ms, sparse copy of 50 MB 20-85 ms."""

MASK_FSTAB_NAME = "vmm-mounts.fstab"
"""The mounts of an unprivileged QEMU's own mount namespace (in the run directory)."""
_POLL_SECONDS = 0.025
_DEAD_STATES = frozenset({"internal-error", "guest-panicked", "shutdown", "io-error"})


class QemuGuest(VmGuest):
    """A running QEMU guest; implements ``cleanroom.backends.base.Guest``."""

    sandbox: ClassVar[str] = SANDBOX
    """QEMU's seccomp filter for guests of this class."""
    wrapper: ClassVar[tuple[str, ...]] = ()
    """A command QEMU is started under (after the death-signal wrapper)."""
    may_drop: ClassVar[bool] = True
    """Whether guests of this class run as an unprivileged user when the machine says so."""

    def __init__(
        self,
        *,
        spec: GuestSpec,
        process: VmmProcess,
        disks: RunDisks,
        qmp_sock: socket.socket,
        agent_sock: socket.socket,
        accel: Accel,
        console: ConsoleLog | None = None,
        user: VmmUser | None = None,
    ) -> None:
        super().__init__(spec=spec, process=process, disks=disks)
        self._console = console
        self._user = user
        self._qmp_sock: socket.socket | None = qmp_sock
        self._agent_sock: socket.socket | None = agent_sock
        self._qmp: QmpClient | None = None
        self._accel = accel

    @classmethod
    async def start(
        cls,
        machine: QemuMachine,
        spec: GuestSpec,
        *,
        base_rootfs: Path | None = None,
        extra_argv: Sequence[str] = (),
        extra_fds: Mapping[int, str] | None = None,
        plan_extra: Mapping[str, Any] | None = None,
        blank_workspace: bool = False,
        base_scratch: Path | None = None,
    ) -> Self:
        """Prepare the run's disk, write the plan, and spawn QEMU.

        ``base_rootfs`` replaces the machine's (a snapshot's saved disk state);
        ``extra_argv`` goes at the end of QEMU's arguments, ``extra_fds`` (descriptor
        -> what it is) are inherited by QEMU and ``plan_extra`` goes into the plan
        (all three: a snapshot's stream); ``blank_workspace``: see ``run_disks``
        (the disks are then in ``self._disks``); ``base_scratch``: the user image's
        scratch disk is a copy of it (a snapshot's, see ``run_disks``). With
        ``machine.unprivileged`` QEMU runs as a uid of its own, in mount and pid
        namespaces of its own (pid 1 there; still this process's child, so ``pid``
        is QEMU's), and gets every file as a descriptor (see
        ``cleanroom.backends.qemu.privilege``). Raises ``RuntimeLaunchFailed``; on
        failure nothing is left running and the per-run disk is removed.
        """
        base = machine.rootfs if base_rootfs is None else base_rootfs
        run_dir = spec.run_dir
        qmp_host, qmp_vm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        agent_host, agent_vm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        console_path = run_dir / CONSOLE_LOG_NAME
        console = ConsoleLog(console_path, spec.console_log_bytes)
        # A run may ask for its own guest shape (the policy's resources).
        machine = replace(
            machine,
            vcpus=spec.vcpus or machine.vcpus,
            memory_mib=spec.memory_mib or machine.memory_mib,
        )
        user = VmmUser.take() if machine.unprivileged and cls.may_drop else None
        handover = FdHandover()
        try:
            async with run_disks(
                spec,
                base,
                QEMU_ROOTFS_METHODS,
                vmm="QEMU",
                qemu_img=machine.qemu_img,
                blank_workspace=blank_workspace,
                base_scratch=base_scratch,
            ) as disks:
                launch = QemuLaunch(
                    machine=machine,
                    rootfs=disks.rootfs.path,
                    rootfs_format=disks.rootfs.format,
                    console_log=console_path,
                    agent_fd=agent_vm.fileno(),
                    qmp_fd=qmp_vm.fileno(),
                    network=spec.network,
                    workspace_disk=disks.workspace.path,
                    image_disk=None if spec.image is None else spec.image.rootfs,
                    scratch_disk=None if disks.scratch is None else disks.scratch.path,
                    console_fd=console.vmm_fd,
                    sandbox=cls.sandbox,
                )
                # A dropped QEMU is pid 1 of its own namespace: its wrapper checks
                # the server by the uid's lock (``drop_prefix``), not by its PPID.
                outer = pdeathsig_prefix() if user is None else []
                if user is not None:
                    launch = _hand_over(launch, disks, base, spec, handover, user)
                argv = [*build_argv(launch, prefix=[*outer, *cls.wrapper]), *extra_argv]
                write_plan(
                    spec,
                    disks,
                    base,
                    backend="qemu",
                    isolation=f"qemu-{machine.accel}",
                    argv=argv,
                    inherited_fds={
                        str(launch.qmp_fd): "QMP monitor (socketpair)",
                        str(launch.agent_fd): "agent channel (socketpair)",
                        str(console.vmm_fd): "console (socketpair, kept up to "
                        f"{spec.console_log_bytes} bytes)",
                        **{str(fd): what for fd, what in (extra_fds or {}).items()},
                        **{str(fd): what for fd, what in handover.fds.items()},
                    },
                    vmm_uid=None if user is None else user.uid,
                    vmm_namespaces=["mnt", "pid"] if user is not None else [],
                    **(plan_extra or {}),
                )
                console_path.touch()
                with contextlib.ExitStack() as spawning:
                    watch = None
                    if user is not None:
                        watch = user.watch()
                        spawning.callback(os.close, watch)
                        spawning.enter_context(new_pid_namespace())
                    process = VmmProcess.spawn(
                        argv,
                        stdout=run_dir / VMM_LOG_NAME,
                        stderr=run_dir / VMM_LOG_NAME,
                        pass_fds=(
                            launch.qmp_fd,
                            launch.agent_fd,
                            console.vmm_fd,
                            *(extra_fds or {}),
                            *handover.fds,
                        ),
                        stdin=watch,
                    )
                console.start()
        except BaseException:
            qmp_host.close()
            agent_host.close()
            console.close()
            if user is not None:
                user.release()
            raise
        finally:
            qmp_vm.close()
            agent_vm.close()
            handover.close()
        return cls(
            spec=spec,
            process=process,
            disks=disks,
            qmp_sock=qmp_host,
            agent_sock=agent_host,
            accel=machine.accel,
            console=console,
            user=user,
        )

    @property
    def isolation(self) -> Isolation:
        return "qemu-kvm" if self._accel == "kvm" else "qemu-tcg"

    async def _exit_failure(self) -> RuntimeLaunchFailed:
        status = await self._process.wait_exit(1.0)
        return self._failed(f"QEMU exited during boot (status {status})")

    async def open_channel(
        self, deadline: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self._check_channel_unopened()
        loop = asyncio.get_running_loop()

        def remaining() -> float:
            return max(0.0, deadline - loop.time())

        timeout_msg = f"guest agent not ready within {self._spec.launch_seconds:g} s"
        try:
            if self._qmp is None:
                sock, self._qmp_sock = self._qmp_sock, None
                assert sock is not None
                self._qmp = await asyncio.wait_for(QmpClient.connect(sock), remaining())
            while True:
                if self._process.exited() is not None:
                    raise await self._exit_failure()
                state = await asyncio.wait_for(self._qmp.run_state(), remaining())
                if state in _DEAD_STATES:
                    raise self._failed(f"guest stopped during boot (state {state})", state=state)
                if await asyncio.wait_for(
                    self._qmp.chardev_frontend_open(AGENT_CHARDEV), remaining()
                ):
                    break
                if remaining() <= 0:
                    raise self._failed(timeout_msg, state=state)
                await asyncio.sleep(min(_POLL_SECONDS, remaining()))
        except QmpClosed as exc:
            raise await self._exit_failure() from exc
        except TimeoutError as exc:
            raise self._failed(timeout_msg) from exc
        sock, self._agent_sock = self._agent_sock, None
        assert sock is not None  # handed over once, with the writer recorded
        reader, writer = await asyncio.open_connection(sock=sock)
        self._channel_opened(writer)
        return reader, writer

    async def _release_vmm_handles(self) -> None:
        """Close the QMP client, the console reader and any socket not yet handed over;
        give back the VMM's uid (QEMU is reaped by now)."""
        if self._user is not None:
            self._user.release()
        if self._console is not None:
            await asyncio.to_thread(self._console.close)
            self._console = None
        if self._qmp is not None:
            await self._qmp.close()
            self._qmp = None
        for sock in (self._qmp_sock, self._agent_sock):
            if sock is not None:
                sock.close()
        self._qmp_sock = self._agent_sock = None


def _hand_over(
    launch: QemuLaunch,
    disks: RunDisks,
    base: Path,
    spec: GuestSpec,
    handover: FdHandover,
    user: VmmUser,
) -> QemuLaunch:
    """``launch`` for a QEMU running as ``user``: every file it opens is a descriptor
    opened here (recorded in ``handover``), its TAP one attached in the run's namespace."""
    m = launch.machine
    machine = replace(
        m,
        kernel=handover.file(m.kernel, "kernel"),
        initrd=None if m.initrd is None else handover.file(m.initrd, "initrd"),
    )
    qcow2 = disks.rootfs.format == "qcow2"
    image = spec.image.rootfs if spec.image is not None else None
    scratch = disks.scratch.path if disks.scratch is not None else None
    net = spec.network
    return replace(
        launch,
        machine=machine,
        rootfs=handover.disk(disks.rootfs.path, writable=True, what="root disk"),
        rootfs_backing=handover.disk(base, writable=False, what="root base") if qcow2 else None,
        workspace_disk=handover.disk(disks.workspace.path, writable=True, what="workspace disk"),
        image_disk=None if image is None else handover.disk(image, writable=False, what="image"),
        scratch_disk=None
        if scratch is None
        else handover.disk(scratch, writable=True, what="scratch disk"),
        tap_fd=None if net is None else handover.adopt(open_tap(net.netns, net.tap), "TAP"),
        add_fd=tuple(handover.add_fd),
        vmm_wrapper=tuple(
            drop_prefix(
                user,
                groups=kvm_groups() if m.accel == "kvm" else (),
                mask=write_mask_fstab(spec.run_dir / MASK_FSTAB_NAME, proc=True),
                watched=True,
            )
        ),
    )
