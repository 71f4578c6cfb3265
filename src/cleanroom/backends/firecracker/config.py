"""Firecracker's ``--config-file`` body and command line, as pure functions.

Field names follow Firecracker's API definitions (``FullVmConfiguration``:
``boot-source``, ``drives``, ``machine-config``, ``network-interfaces``,
``vsock``, ``entropy``). Paths inside the config are relative to the run
directory (the VMM's working directory), so UNIX socket paths stay short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.backends.images import agent_boot_args
from cleanroom.backends.process import netns_prefix
from cleanroom.netspec import NetworkAttachment

__all__ = [
    "AGENT_VSOCK_PORT",
    "API_SOCKET_NAME",
    "CONFIG_FILE_NAME",
    "VSOCK_SOCKET_NAME",
    "FirecrackerLaunch",
    "boot_args",
    "build_argv",
    "build_config",
]

AGENT_VSOCK_PORT = 1024
"""The guest port the agent listens on (``cleanroom.channel=vsock:<port>``)."""
API_SOCKET_NAME = "fc.sock"
VSOCK_SOCKET_NAME = "vsock.sock"
CONFIG_FILE_NAME = "firecracker.json"


@dataclass(frozen=True)
class FirecrackerLaunch:
    """Everything that determines one Firecracker config file."""

    vmlinux: Path
    initrd: Path | None
    """None: the kernel boots the rootfs directly (``DIRECT_BOOT_ARGS``)."""
    rootfs: Path
    vcpus: int = 1
    memory_mib: int = 256
    guest_cid: int = 3
    agent_port: int = AGENT_VSOCK_PORT
    network: NetworkAttachment | None = None
    workspace_disk: Path | None = None
    """A second drive the guest mounts at /workspace (found by its label)."""
    debug: bool = False


def boot_args(launch: FirecrackerLaunch) -> str:
    """The guest kernel command line (Firecracker's serial console is ttyS0)."""
    args = [
        "console=ttyS0",
        "loglevel=7" if launch.debug else "quiet",
        # reboot=k: a guest reboot makes Firecracker exit; panic=1 turns a
        # kernel panic into that reboot, so a dead guest ends the VMM at once.
        "reboot=k",
        "panic=1",
        "pci=off",
        *agent_boot_args(
            f"vsock:{launch.agent_port}", direct=launch.initrd is None, debug=launch.debug
        ),
    ]
    return " ".join(args)


def build_config(launch: FirecrackerLaunch) -> dict[str, Any]:
    """The ``--config-file`` JSON body for ``launch``."""
    config: dict[str, Any] = {
        "boot-source": {
            "kernel_image_path": str(launch.vmlinux),
            **({} if launch.initrd is None else {"initrd_path": str(launch.initrd)}),
            "boot_args": boot_args(launch),
        },
        "drives": [
            {
                "drive_id": "rootfs",
                "path_on_host": str(launch.rootfs),
                "is_root_device": True,
                "is_read_only": False,
                # Writes die with the run: flushing them buys nothing.
                "cache_type": "Unsafe",
            }
        ],
        "machine-config": {
            "vcpu_count": launch.vcpus,
            "mem_size_mib": launch.memory_mib,
            "smt": False,
        },
        "vsock": {"guest_cid": launch.guest_cid, "uds_path": VSOCK_SOCKET_NAME},
        "entropy": {},
    }
    if launch.workspace_disk is not None:
        config["drives"].append(
            {
                "drive_id": "workspace",
                "path_on_host": str(launch.workspace_disk),
                "is_root_device": False,
                "is_read_only": False,
                "cache_type": "Unsafe",
            }
        )
    if launch.network is not None:
        config["network-interfaces"] = [
            {
                "iface_id": "eth0",
                "host_dev_name": launch.network.tap,
                "guest_mac": launch.network.mac,
            }
        ]
    return config


def build_argv(
    binary: str, network: NetworkAttachment | None, prefix: Sequence[str] = ()
) -> list[str]:
    """``prefix`` + (``ip netns exec NS`` when networked) + firecracker with its
    API socket and config file (both relative to the run directory)."""
    return [
        *prefix,
        *netns_prefix(network),
        binary,
        "--api-sock",
        API_SOCKET_NAME,
        "--config-file",
        CONFIG_FILE_NAME,
    ]
