"""The QEMU ``-M microvm`` command line, as a pure function of a launch description.

Choices that matter on software emulation (measured; see the backend notes):
ACPI stays on (the guest kernel finds virtio-mmio devices only through ACPI),
``pit=off,pic=off,isa-serial=off`` save most of a second, ``rtc=on`` (off costs
~1 s). TCG needs ``-cpu max`` and ``tsc_early_khz`` (or clock calibration may
hang). The agent channel and QMP are socketpair fds passed to QEMU (no socket
files, no path-length limit, no connect race); the disk uses ``cache=unsafe``
because every write is thrown away with the run, so flushes buy nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cleanroom.backends.images import agent_boot_args
from cleanroom.backends.process import netns_prefix
from cleanroom.netspec import NetworkAttachment

__all__ = [
    "AGENT_CHARDEV",
    "AGENT_PORT_NAME",
    "SANDBOX",
    "WORKSPACE_DRIVE",
    "QemuLaunch",
    "QemuMachine",
    "build_argv",
    "kernel_cmdline",
    "netns_prefix",
    "nic_argv",
]

WORKSPACE_DRIVE = "ws"
"""The QEMU drive id of the workspace disk (QMP names it by this)."""

AGENT_PORT_NAME = "org.cleanroom.agent"
"""The virtserialport name; the guest sees /dev/virtio-ports/<name>."""
AGENT_CHARDEV = "agent"
"""The chardev id whose ``frontend-open`` says the guest agent opened its port."""
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
"""QEMU's seccomp filter: no obsolete syscalls, no set*id, no fork/exec, no
affinity or scheduler changes. Everything QEMU opens is opened before it
applies (disks, TAP, /dev/urandom) or passed in as a descriptor."""

Accel = Literal["kvm", "tcg"]


@dataclass(frozen=True)
class QemuMachine:
    """The host-side inputs every guest of a prepared QEMU backend shares: binary,
    image files (``rootfs`` is the read-only base each run copies), sizing, accel."""

    binary: str
    kernel: Path
    initrd: Path | None
    """None: the kernel boots the rootfs directly (``DIRECT_BOOT_ARGS``)."""
    rootfs: Path
    accel: Accel
    vcpus: int = 1
    memory_mib: int = 256
    tsc_khz: int | None = None
    """Host TSC kHz; passed as ``tsc_early_khz`` under TCG."""
    qemu_img: str = "qemu-img"
    debug: bool = False
    """Console on an emulated UART (``ttyS0``) so the earliest kernel messages are kept."""
    extra_kernel_args: tuple[str, ...] = ()
    unprivileged: bool = False
    """Run guests' QEMU as a uid of its own (``cleanroom.backends.qemu.privilege``)."""


@dataclass(frozen=True)
class QemuLaunch:
    """Everything that determines one QEMU command line: the machine, plus the run's
    own rootfs copy, console log, inherited channel descriptors and network."""

    machine: QemuMachine
    rootfs: Path
    rootfs_format: Literal["raw", "qcow2"]
    console_log: Path
    agent_fd: int
    qmp_fd: int
    network: NetworkAttachment | None = None
    workspace_disk: Path | None = None
    """A second virtio-blk disk the guest mounts at /workspace (found by its label)."""
    image_disk: Path | None = None
    """A user image's ext4 file, attached read-only (the guest finds it as its one
    read-only disk); needs ``scratch_disk``."""
    scratch_disk: Path | None = None
    """The run's writable layer over ``image_disk`` (found by its label)."""
    console_fd: int | None = None
    sandbox: str = SANDBOX
    """QEMU's ``-sandbox`` option (seccomp filter)."""
    vmm_wrapper: tuple[str, ...] = ()
    """Runs QEMU (after the netns wrapper), e.g. the drop to an unprivileged user."""
    add_fd: tuple[str, ...] = ()
    """``-add-fd`` arguments: the fd sets the ``/dev/fdset/N`` disk paths name."""
    rootfs_backing: Path | None = None
    """A qcow2 ``rootfs``'s raw backing file, instead of the path in its header."""
    tap_fd: int | None = None
    """An open TAP descriptor for ``network`` instead of its interface name."""
    """A socket the console goes to (read by a bounded host reader, see
    ``cleanroom.backends.console``); None: QEMU writes ``console_log`` itself."""


def _opt(value: object) -> str:
    """A value inside a QEMU ``key=value,...`` option (commas are doubled)."""
    return str(value).replace(",", ",,")


def kernel_cmdline(launch: QemuLaunch) -> str:
    """The guest kernel command line for ``launch``."""
    m = launch.machine
    args = [
        "console=ttyS0" if m.debug else "console=hvc0",
        "loglevel=7" if m.debug else "quiet",
        # With -no-reboot a panic or reboot makes QEMU exit, so a dead guest
        # is noticed at once instead of at the launch deadline.
        "panic=-1",
        "reboot=t",
        *agent_boot_args(
            f"virtio-serial:{AGENT_PORT_NAME}", direct=m.initrd is None, debug=m.debug
        ),
    ]
    if launch.image_disk is not None:
        args.append("cleanroom.image=1")
    if m.accel == "tcg" and m.tsc_khz:
        args.append(f"tsc_early_khz={m.tsc_khz}")
    args.extend(m.extra_kernel_args)
    return " ".join(args)


def build_argv(launch: QemuLaunch, prefix: Sequence[str] = ()) -> list[str]:
    """The full argv: ``prefix`` (e.g. the death-signal wrapper), the netns
    wrapper when networked, then QEMU and its arguments."""
    m = launch.machine
    machine = "microvm,acpi=on,pit=off,pic=off,rtc=on," + (
        "isa-serial=on" if m.debug else "isa-serial=off"
    )
    if m.accel == "kvm":
        accel = ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    else:
        # tb-size=32 trims ~50 MiB of translation cache per guest.
        accel = ["-accel", "tcg,tb-size=32", "-cpu", "max"]
    argv = [*prefix, *netns_prefix(launch.network), *launch.vmm_wrapper, m.binary]
    argv += ["-M", machine, *accel]
    argv += ["-m", str(m.memory_mib), "-smp", str(m.vcpus)]
    argv += ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    argv += ["-sandbox", launch.sandbox]
    argv += ["-kernel", str(m.kernel)]
    if m.initrd is not None:
        argv += ["-initrd", str(m.initrd)]
    argv += ["-append", kernel_cmdline(launch)]
    argv += ["-chardev", f"socket,id=qmp,fd={launch.qmp_fd}", "-mon", "chardev=qmp,mode=control"]
    if launch.console_fd is not None:
        argv += ["-chardev", f"socket,id=console,fd={launch.console_fd}"]
    else:
        argv += ["-chardev", f"file,id=console,path={_opt(launch.console_log)}"]
    argv += ["-chardev", f"socket,id={AGENT_CHARDEV},fd={launch.agent_fd}"]
    argv += ["-device", "virtio-serial-device,max_ports=4"]
    if m.debug:
        argv += ["-serial", "chardev:console"]
    else:
        argv += ["-device", "virtconsole,chardev=console"]
    argv += ["-device", f"virtserialport,chardev={AGENT_CHARDEV},name={AGENT_PORT_NAME}"]
    argv += launch.add_fd
    root = f"id=root,file={_opt(launch.rootfs)},format={launch.rootfs_format},if=none,cache=unsafe"
    if launch.rootfs_backing is not None:
        root += f",backing.driver=raw,backing.file.filename={_opt(launch.rootfs_backing)}"
    argv += ["-drive", root, "-device", "virtio-blk-device,drive=root"]
    if launch.workspace_disk is not None:
        # Listed after the root disk so that the root stays /dev/vda.
        argv += [
            "-drive",
            f"id={WORKSPACE_DRIVE},file={_opt(launch.workspace_disk)},"
            "format=raw,if=none,cache=unsafe",
            "-device",
            f"virtio-blk-device,drive={WORKSPACE_DRIVE}",
        ]
    if launch.image_disk is not None:
        if launch.scratch_disk is None:
            raise ValueError("a user image needs a scratch disk")
        # readonly=on: QEMU opens the cached image read-only and the guest sees a
        # read-only disk; nothing of the run can write it.
        argv += [
            "-drive",
            f"id=image,file={_opt(launch.image_disk)},format=raw,if=none,readonly=on",
            "-device",
            "virtio-blk-device,drive=image",
            "-drive",
            f"id=scratch,file={_opt(launch.scratch_disk)},format=raw,if=none,cache=unsafe",
            "-device",
            "virtio-blk-device,drive=scratch",
        ]
    argv += [
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng0",
    ]
    if launch.network is not None:
        argv += nic_argv(launch.network.tap, launch.network.mac, launch.tap_fd)
    return argv


def nic_argv(tap: str, mac: str, tap_fd: int | None = None) -> list[str]:
    """The guest NIC on TAP device ``tap``, or on the inherited descriptor ``tap_fd``
    when given (the last devices of :func:`build_argv`)."""
    return [
        "-netdev",
        f"tap,id=net0,fd={tap_fd}"
        if tap_fd is not None
        else f"tap,id=net0,ifname={_opt(tap)},script=no,downscript=no",
        "-device",
        f"virtio-net-device,netdev=net0,mac={_opt(mac)}",
    ]
