"""Backends start microVMs and hand back a byte stream to the guest agent.

``resolve_backend_name`` picks a backend (explicit request > runtime config
``default_backend`` > ``auto``), ``get_backend`` builds it from the runtime
config. ``auto`` means firecracker when it is *proven* usable here (binary,
/dev/kvm and a cached passing canary boot; the canary runs on the first
``FirecrackerBackend.prepare()``), otherwise qemu.
"""

from __future__ import annotations

from typing import Literal

from cleanroom.backends.base import (
    Backend,
    Capabilities,
    Guest,
    GuestSpec,
    Isolation,
    NetworkAttachment,
)
from cleanroom.backends.firecracker import FirecrackerBackend
from cleanroom.backends.qemu import QemuBackend
from cleanroom.config import RuntimeConfig
from cleanroom.errors import InvalidRequest

__all__ = [
    "KNOWN_BACKENDS",
    "Backend",
    "BackendName",
    "Capabilities",
    "FirecrackerBackend",
    "Guest",
    "GuestSpec",
    "Isolation",
    "NetworkAttachment",
    "QemuBackend",
    "get_backend",
    "resolve_backend_name",
]

BackendName = Literal["qemu", "firecracker"]
KNOWN_BACKENDS: tuple[BackendName, ...] = ("firecracker", "qemu")


def get_backend(name: BackendName, config: RuntimeConfig) -> Backend:
    """A new backend instance for ``name`` (``InvalidRequest`` for unknown names)."""
    if name == "qemu":
        return QemuBackend(config.qemu)
    if name == "firecracker":
        return FirecrackerBackend(config.firecracker)
    raise InvalidRequest(
        f"unknown backend {name!r} (known: {', '.join(KNOWN_BACKENDS)})",
        details={"backend": name, "known": list(KNOWN_BACKENDS)},
    )


def resolve_backend_name(requested: str | None, config: RuntimeConfig) -> BackendName:
    """The backend to use: ``requested``, else ``config.default_backend``; ``auto``
    (or nothing) chooses firecracker only if it is proven usable here, else qemu.

    Unknown names raise ``InvalidRequest``. Explicit choices are never
    downgraded: an unusable explicit backend fails later, in ``prepare``.
    """
    name = requested if requested is not None else config.default_backend
    if name in ("qemu", "firecracker"):
        return "qemu" if name == "qemu" else "firecracker"
    if name != "auto":
        raise InvalidRequest(
            f"unknown backend {name!r} (known: auto, {', '.join(KNOWN_BACKENDS)})",
            details={"backend": name, "known": ["auto", *KNOWN_BACKENDS]},
        )
    if FirecrackerBackend(config.firecracker).cached_usable():
        return "firecracker"
    return "qemu"
