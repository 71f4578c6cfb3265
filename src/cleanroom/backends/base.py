"""The backend interface: start a microVM and hand back a byte stream to its agent.

Backends know about VMMs; they do not speak the agent protocol (the service
does, so command execution exists once). Backend-specific settings come from
each backend's own config section and never appear in these neutral types.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cleanroom.config_limits import DEFAULT_CONSOLE_LOG_BYTES
from cleanroom.doctor import DoctorCheck
from cleanroom.images.userimage import UserImage
from cleanroom.netspec import NetworkAttachment

__all__ = [
    "Backend",
    "Capabilities",
    "Guest",
    "GuestFacts",
    "GuestSpec",
    "Isolation",
    "NetworkAttachment",
    "NoRestore",
    "Restorer",
    "restore_or_reason",
]

Isolation = str
"""How a guest is isolated, ``<backend>-<mechanism>``: today ``firecracker-kvm``,
``qemu-kvm`` or ``qemu-tcg``. A plain string so that a new backend names its own
without touching this module."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can enforce, published at start and by ``doctor``."""

    backend_name: str
    backend_version: str
    isolation: Isolation
    network_default_deny: bool
    network_host_port_filtering: bool
    dns_control: bool
    policy_immutability: bool
    audit_event_emission: bool

    def to_dict(self) -> dict[str, Any]:
        """``{"backend_name", "backend_version", "isolation", "capabilities": {...}}``."""
        flat = asdict(self)
        return {
            "backend_name": flat.pop("backend_name"),
            "backend_version": flat.pop("backend_version"),
            "isolation": flat.pop("isolation"),
            "capabilities": flat,
        }


@dataclass(frozen=True)
class GuestSpec:
    """Everything a backend needs to start one guest for one run."""

    run_id: str
    run_dir: Path
    """Exists; the backend writes its plan, console log and sockets here."""
    launch_seconds: float
    """Deadline for the guest to boot and its agent channel to open."""
    network: NetworkAttachment | None = None
    """None: the guest gets no NIC at all (nothing to reach)."""
    workspace: Path | None = None
    """A host directory to copy into the guest's /workspace disk before boot (no
    special files in it); None: the disk starts empty and the service streams
    the workspace through the agent. ``Guest.facts.workspace_seeded`` says
    which happened."""
    image: UserImage | None = None
    """The user image commands run in: its ext4 file is attached read-only (never
    copied or written) with a fresh writable scratch disk laid over it in the
    guest. None: commands run in the built-in runtime image, as before."""
    disk_mib: int | None = None
    """Virtual size of each writable disk (the scratch root layer and the
    workspace), sparse on the host; None: the backend's default (16 GiB)."""
    vcpus: int | None = None
    """None: the backend config's value."""
    memory_mib: int | None = None
    """None: the backend config's value."""
    console_log_bytes: int = DEFAULT_CONSOLE_LOG_BYTES
    """Console output kept in ``console.log``; the rest is dropped (``limits``)."""


@dataclass(frozen=True)
class GuestFacts:
    """How a guest was started (for the run record and the service's next steps)."""

    rootfs_method: str
    """How the run's rootfs copy was made: ``reflink``, ``copy``, ``qcow2-overlay``, ..."""
    workspace_seeded: bool
    """Whether the workspace disk already holds ``GuestSpec.workspace`` (no streaming needed)."""


class Guest(Protocol):
    """One running microVM. ``destroy`` must be safe to call at any time, repeatedly."""

    @property
    def isolation(self) -> Isolation:
        """How this guest is isolated (``qemu-tcg`` etc.), for the run record."""
        ...

    @property
    def plan_path(self) -> Path:
        """The exact VMM argv or config file written before start (``plan_path`` in results)."""
        ...

    @property
    def console_path(self) -> Path:
        """The guest console log."""
        ...

    @property
    def facts(self) -> GuestFacts:
        """How this guest was started (rootfs method, whether the workspace is seeded)."""
        ...

    @property
    def timings(self) -> Mapping[str, float]:
        """Backend timings in ms: ``rootfs_prepare_ms``, ``vmm_start_ms``, ... (numbers only;
        how the guest was started is in ``facts``)."""
        ...

    async def open_channel(
        self, deadline: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to the guest agent's byte stream, retrying until ``deadline``
        (a ``loop.time()`` value). The first protocol bytes may wait in the
        channel until the agent listens. Raises ``RuntimeLaunchFailed`` (with
        the console tail in details) on deadline or if the VMM exits."""
        ...

    def console_tail(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of the console log (for error details)."""
        ...

    def exited(self) -> int | None:
        """The VMM's exit status if it has exited, else None."""
        ...

    def kill(self) -> None:
        """Stop the guest now: SIGKILL its VMM (by PID) and return at once.

        Nothing in the guest runs after this; ``destroy`` must still be called
        to reap the VMM and remove its files.
        """
        ...

    async def destroy(self) -> None:
        """Kill the VMM (by PID), wait for it, and remove its rootfs copy and sockets."""
        ...


class Backend(Protocol):
    """A way to start guests. One instance per backend per server."""

    name: str

    async def prepare(self) -> Capabilities:
        """Resolve the image, binaries and acceleration (cached after the first call).

        Raises ``BackendUnavailable`` (saying exactly what is missing) or
        ``ImageUnavailable``.
        """
        ...

    async def launch(self, spec: GuestSpec) -> Guest:
        """Start a guest (call ``prepare`` first). Raises ``RuntimeLaunchFailed``."""
        ...

    async def doctor(self) -> list[DoctorCheck]:
        """Readiness checks specific to this backend (binary, KVM, kernel, rootfs)."""
        ...

    async def close(self) -> None:
        """Release backend-wide resources (e.g. warm guests)."""
        ...


@dataclass(frozen=True)
class NoRestore:
    """Why a guest cannot be restored from a snapshot for a run (it boots cold)."""

    reason: str


@runtime_checkable
class Restorer(Protocol):
    """A backend that can also start guests from a snapshot of a booted guest.

    Optional: a ``Backend`` without ``restore`` simply never restores (see
    :func:`restore_or_reason`), so test doubles and new backends need not
    implement it.
    """

    async def restore(self, spec: GuestSpec) -> Guest | NoRestore:
        """A guest for ``spec`` resumed from a valid snapshot, or why not (no
        snapshot yet, a shape the snapshot does not have, ...). Raises
        ``RuntimeLaunchFailed`` when the VMM cannot be started (nothing is left
        running). The guest is resumed by its ``open_channel``; if that fails,
        the caller destroys the guest and boots cold."""
        ...


async def restore_or_reason(backend: Backend, spec: GuestSpec) -> Guest | NoRestore:
    """``backend.restore(spec)`` if the backend can restore, else the reason it cannot."""
    if isinstance(backend, Restorer):
        return await backend.restore(spec)
    return NoRestore(f"the {backend.name} backend does not restore snapshots")
