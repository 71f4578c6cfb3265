"""What every VMM backend shares: resolve once under a lock, then launch guests.

A backend subclass says how to find its binary and image, how to turn them into
a *machine* (the host-side inputs every guest of it boots from) and how to
start one guest on a machine; :class:`VmBackend` does the rest of the
``cleanroom.backends.base.Backend`` contract (``prepare`` cached after the first
call, ``launch`` preparing on demand, canary boots, ``close``).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

from cleanroom import backend_table
from cleanroom.backends.base import Capabilities, Guest, GuestSpec, Isolation
from cleanroom.backends.hostinfo import find_vmm_binary
from cleanroom.backends.images import BootImage, resolve_image
from cleanroom.backends.verdicts import VerdictCache
from cleanroom.backends.vmguest import boot_canary
from cleanroom.backends.vmsettings import VmmSettings
from cleanroom.doctor import DoctorCheck

__all__ = ["VmBackend"]

SettingsT = TypeVar("SettingsT", bound=VmmSettings)
MachineT = TypeVar("MachineT")
GuestT = TypeVar("GuestT", bound=Guest)


class VmBackend(ABC, Generic[SettingsT, MachineT, GuestT]):
    """The shared half of a VMM backend (see the module docstring)."""

    name: str
    default_binary: ClassVar[str]
    """The VMM program looked up on PATH when ``binary_path`` is not configured."""
    not_on_path: ClassVar[str]
    """The ``BackendUnavailable`` message when ``default_binary`` is not on PATH."""

    def __init__(self, config: SettingsT, *, verdicts: VerdictCache | None = None) -> None:
        self._config = config
        self._verdicts = verdicts if verdicts is not None else VerdictCache()
        self._lock = asyncio.Lock()
        self._machine: MachineT | None = None
        self._caps: Capabilities | None = None

    @abstractmethod
    async def _resolve(self) -> tuple[MachineT, Capabilities]:
        """Find binary, image and acceleration; the machine and what it can enforce.

        Raises ``BackendUnavailable`` or ``ImageUnavailable``.
        """

    @abstractmethod
    async def _start(self, machine: MachineT, spec: GuestSpec) -> GuestT:
        """Start one guest of ``machine`` (raises ``RuntimeLaunchFailed``)."""

    @abstractmethod
    async def doctor(self) -> list[DoctorCheck]:
        """Readiness checks specific to this backend (binary, KVM, kernel, rootfs)."""

    async def prepare(self) -> Capabilities:
        """See ``Backend.prepare``: resolved once, then cached."""
        async with self._lock:
            if self._caps is None:
                self._machine, self._caps = await self._resolve()
            return self._caps

    async def launch(self, spec: GuestSpec) -> GuestT:
        """See ``Backend.launch`` (prepares first if needed)."""
        if self._machine is None:
            await self.prepare()
        assert self._machine is not None
        return await self._start(self._machine, spec)

    async def close(self) -> None:
        """Nothing backend-wide to release (guests are owned by their runs)."""

    def find_binary(self) -> str:
        """The VMM binary to run; ``BackendUnavailable`` naming exactly what is missing."""
        return find_vmm_binary(
            self._config.binary_path, self.default_binary, not_on_path=self.not_on_path
        )

    def _configured_image(self, vmlinux: bool = False) -> BootImage:
        c = self._config
        extra = (c.kernel_image,) if vmlinux else ()
        return resolve_image(self.name, c.kernel_image, c.initrd, c.rootfs, *extra)

    async def _canary(
        self, machine: MachineT, *, name: str, label: str, seconds: float
    ) -> tuple[bool, str]:
        """Boot one throwaway guest of ``machine`` (see ``vmguest.boot_canary``)."""
        return await boot_canary(
            lambda spec: self._start(machine, spec), name=name, label=label, seconds=seconds
        )

    def _capabilities(self, version: str, isolation: Isolation) -> Capabilities:
        """What this backend's guests enforce, as promised in its table entry.

        The guest has no NIC unless the network layer attaches a TAP inside the
        run's namespace, where the run's ruleset and DNS filter apply.
        """
        promised = backend_table.BACKENDS[self.name].capabilities
        return Capabilities(
            backend_name=self.name,
            backend_version=version,
            isolation=isolation,
            network_default_deny="network_default_deny" in promised,
            network_host_port_filtering="network_host_port_filtering" in promised,
            dns_control="dns_control" in promised,
            policy_immutability="policy_immutability" in promised,
            audit_event_emission="audit_event_emission" in promised,
        )
