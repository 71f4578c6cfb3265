"""Backends start microVMs and hand back a byte stream to the guest agent.

Which backends exist is :data:`cleanroom.backend_table.BACKENDS` (one table of
import strings and capabilities). ``resolve_backend_name`` picks a backend
(explicit request > runtime config ``default_backend`` > ``auto``),
``get_backend`` builds it from its own section of the runtime config. ``auto``
takes a ``needs_kvm`` backend (firecracker) only when it is *proven* usable
(binary, /dev/kvm and a cached passing canary boot; the canary runs on its
first ``prepare()``), otherwise the first backend that needs no KVM (qemu).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from cleanroom import backend_table
from cleanroom.backend_table import BACKENDS, BackendEntry, backend_names, load_ref
from cleanroom.backends.base import (
    Backend,
    Capabilities,
    Guest,
    GuestFacts,
    GuestSpec,
    Isolation,
    NetworkAttachment,
)
from cleanroom.backends.firecracker import FirecrackerBackend
from cleanroom.backends.qemu import QemuBackend
from cleanroom.config import RuntimeConfig
from cleanroom.errors import InvalidRequest

__all__ = [
    "BACKENDS",
    "KNOWN_BACKENDS",
    "Backend",
    "BackendEntry",
    "BackendName",
    "Capabilities",
    "FirecrackerBackend",
    "Guest",
    "GuestFacts",
    "GuestSpec",
    "Isolation",
    "NetworkAttachment",
    "QemuBackend",
    "get_backend",
    "resolve_backend_name",
]

BackendName = str
"""A name from :data:`BACKENDS`."""
KNOWN_BACKENDS: tuple[BackendName, ...] = backend_names()
"""The table's names when this module was imported (code that must follow the
table, e.g. in tests that extend it, calls ``backend_table.backend_names()``)."""


@runtime_checkable
class _CachedUsable(Protocol):
    def cached_usable(self) -> bool:
        """Whether a cached canary verdict proves the backend usable (no boot, no build)."""
        ...


def _unknown(name: str, *, with_auto: bool) -> InvalidRequest:
    names = list(backend_names())
    known = ["auto", *names] if with_auto else names
    return InvalidRequest(
        f"unknown backend {name!r} (known: {', '.join(known)})",
        details={"backend": name, "known": known},
    )


def get_backend(name: BackendName, config: RuntimeConfig) -> Backend:
    """A new backend instance for ``name`` (``InvalidRequest`` for unknown names)."""
    entry = backend_table.BACKENDS.get(name)
    if entry is None:
        raise _unknown(name, with_auto=False)
    backend: Backend = load_ref(entry.backend)(config.backends[name])
    return backend


def resolve_backend_name(requested: str | None, config: RuntimeConfig) -> BackendName:
    """The backend to use: ``requested``, else ``config.default_backend``; ``auto``
    (or nothing) prefers a proven-usable ``needs_kvm`` backend (see above).

    Unknown names raise ``InvalidRequest``. Explicit choices are never
    downgraded: an unusable explicit backend fails later, in ``prepare``.
    """
    name = requested if requested is not None else config.default_backend
    table = backend_table.BACKENDS
    if name in table:
        return name
    if name != "auto":
        raise _unknown(name, with_auto=True)
    fallback: str | None = None
    for entry in table.values():
        if "needs_kvm" not in entry.capabilities:
            fallback = fallback or entry.name
            continue
        candidate = get_backend(entry.name, config)
        if isinstance(candidate, _CachedUsable) and candidate.cached_usable():
            return entry.name
    if fallback is None:
        raise InvalidRequest("no backend can run without KVM", details={"known": list(table)})
    return fallback
