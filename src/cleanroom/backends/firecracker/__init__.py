"""The Firecracker backend (config file, hybrid vsock, KVM only)."""

from __future__ import annotations

from cleanroom.backends.firecracker.backend import (
    FirecrackerBackend,
    find_firecracker,
    firecracker_verdict_key,
    is_elf,
)
from cleanroom.backends.firecracker.config import (
    AGENT_VSOCK_PORT,
    FirecrackerLaunch,
    boot_args,
    build_argv,
    build_config,
)
from cleanroom.backends.firecracker.guest import FirecrackerGuest, FirecrackerMachine
from cleanroom.backends.firecracker.settings import FirecrackerConfig
from cleanroom.backends.firecracker.vsock import (
    HybridVsockError,
    HybridVsockProtocolError,
    HybridVsockTimeout,
    connect_hybrid_vsock,
)

__all__ = [
    "AGENT_VSOCK_PORT",
    "FirecrackerBackend",
    "FirecrackerConfig",
    "FirecrackerGuest",
    "FirecrackerLaunch",
    "FirecrackerMachine",
    "HybridVsockError",
    "HybridVsockProtocolError",
    "HybridVsockTimeout",
    "boot_args",
    "build_argv",
    "build_config",
    "connect_hybrid_vsock",
    "find_firecracker",
    "firecracker_verdict_key",
    "is_elf",
]
