"""The QEMU ``-M microvm`` backend (virtio-mmio, virtio-serial agent channel)."""

from __future__ import annotations

from cleanroom.backends.qemu.accel import AccelVerdict, VerdictCache, resolve_accel, verdict_key
from cleanroom.backends.qemu.argv import AGENT_PORT_NAME, QemuLaunch, build_argv, kernel_cmdline
from cleanroom.backends.qemu.backend import QemuBackend, qemu_version
from cleanroom.backends.qemu.guest import QemuGuest, QemuMachine
from cleanroom.backends.qemu.settings import QemuAccel, QemuConfig

__all__ = [
    "AGENT_PORT_NAME",
    "AccelVerdict",
    "QemuAccel",
    "QemuBackend",
    "QemuConfig",
    "QemuGuest",
    "QemuLaunch",
    "QemuMachine",
    "VerdictCache",
    "build_argv",
    "kernel_cmdline",
    "qemu_version",
    "resolve_accel",
    "verdict_key",
]
