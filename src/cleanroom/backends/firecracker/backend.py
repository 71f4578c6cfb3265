"""The Firecracker backend: needs a ``firecracker`` binary, a working /dev/kvm and
an ELF vmlinux; proven usable by a canary boot whose verdict is cached."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from cleanroom.backends.base import Capabilities, GuestSpec
from cleanroom.backends.firecracker.config import FirecrackerLaunch
from cleanroom.backends.firecracker.guest import FirecrackerGuest, FirecrackerMachine
from cleanroom.backends.firecracker.settings import FirecrackerConfig
from cleanroom.backends.hostinfo import (
    KVM_DEVICE,
    host_kvm_identity,
    vmm_version,
)
from cleanroom.backends.images import BootImage, verify_boot_image
from cleanroom.backends.process import pdeathsig_prefix
from cleanroom.backends.verdicts import cached_verdict
from cleanroom.backends.vmbackend import VmBackend
from cleanroom.doctor import DoctorCheck
from cleanroom.errors import (
    BackendUnavailable,
    CleanroomError,
    ImageUnavailable,
)

__all__ = [
    "DEFAULT_FIRECRACKER_BINARY",
    "FIRECRACKER_CANARY_SECONDS",
    "FirecrackerBackend",
    "find_firecracker",
    "firecracker_verdict_key",
    "is_elf",
]

DEFAULT_FIRECRACKER_BINARY = "firecracker"
FIRECRACKER_CANARY_SECONDS = 20.0
_VERSION = re.compile(r"Firecracker\s+v?([0-9][^\s]*)")


def find_firecracker(config: FirecrackerConfig) -> str:
    """The binary to run; ``BackendUnavailable`` naming exactly what is missing."""
    return FirecrackerBackend(config).find_binary()


def is_elf(path: Path) -> bool:
    """Whether ``path`` starts with the ELF magic (Firecracker on x86_64 boots ELF only)."""
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def firecracker_verdict_key(kvm_identity: str, version: str, image_digest: str) -> str:
    """Cache key of a Firecracker canary verdict."""
    return f"firecracker|{kvm_identity}|fc:{version}|image:{image_digest}"


def _firecracker_version(binary: str) -> str:
    return vmm_version(binary, _VERSION)


class FirecrackerBackend(VmBackend[FirecrackerConfig, FirecrackerMachine, FirecrackerGuest]):
    """Implements ``cleanroom.backends.base.Backend`` with Firecracker."""

    name = "firecracker"
    default_binary = DEFAULT_FIRECRACKER_BINARY
    not_on_path = (
        "firecracker binary not found: not on PATH and backends.firecracker.binary_path is not set"
    )

    def _image(self) -> BootImage:
        image = self._configured_image(vmlinux=True)
        if not is_elf(image.vmlinux):
            raise ImageUnavailable(
                f"firecracker needs an uncompressed ELF vmlinux; {image.vmlinux} is not ELF",
                details={"file": str(image.vmlinux)},
            )
        return image

    def _kvm(self) -> str:
        identity = host_kvm_identity()
        if identity is None:
            raise BackendUnavailable(
                f"firecracker needs {KVM_DEVICE} (missing or not accessible read-write)",
                details={"missing": str(KVM_DEVICE)},
            )
        return identity

    def machine_for(self, binary: str, image: BootImage) -> FirecrackerMachine:
        """The machine that ``binary`` and ``image`` give with this config (touches no file)."""
        launch = FirecrackerLaunch(
            vmlinux=image.vmlinux,
            initrd=image.initrd,
            rootfs=image.rootfs,
            vcpus=self._config.vcpus,
            memory_mib=self._config.memory_mib,
            guest_cid=self._config.guest_cid,
        )
        return FirecrackerMachine(binary=binary, launch=launch)

    async def _start(self, machine: FirecrackerMachine, spec: GuestSpec) -> FirecrackerGuest:
        return await FirecrackerGuest.start(machine, spec)

    async def _resolve(self) -> tuple[FirecrackerMachine, Capabilities]:
        binary = self.find_binary()
        identity = self._kvm()
        pdeathsig_prefix()
        version = await asyncio.to_thread(_firecracker_version, binary)
        image = await asyncio.to_thread(self._image)
        machine = self.machine_for(binary, image)
        verdict = await cached_verdict(
            self._verdicts,
            firecracker_verdict_key(identity, version, image.digest),
            lambda: self._canary(
                machine, name="fc-canary", label="firecracker", seconds=FIRECRACKER_CANARY_SECONDS
            ),
        )
        if not verdict.kvm_works:
            raise BackendUnavailable(verdict.reason, details={"checked_at": verdict.checked_at})
        return machine, self._capabilities(version, "firecracker-kvm")

    def cached_usable(self) -> bool:
        """Cheap check used by backend auto-selection: binary, /dev/kvm, and a cached
        passing canary verdict for the current image (no boot, no build)."""
        try:
            binary = self.find_binary()
            identity = self._kvm()
            version = _firecracker_version(binary)
            image = self._image()
        except CleanroomError:
            return False
        verdict = self._verdicts.get(firecracker_verdict_key(identity, version, image.digest))
        return verdict is not None and verdict.kvm_works

    async def doctor(self) -> list[DoctorCheck]:
        checks: list[DoctorCheck] = []
        try:
            binary = self.find_binary()
            version = await asyncio.to_thread(_firecracker_version, binary)
            checks.append(DoctorCheck("firecracker.binary", "pass", f"{binary} {version}"))
        except BackendUnavailable as exc:
            checks.append(DoctorCheck("firecracker.binary", "warn", exc.message, exc.details))
        try:
            identity = self._kvm()
            checks.append(DoctorCheck("firecracker.kvm", "pass", f"{KVM_DEVICE} ({identity})"))
        except BackendUnavailable as exc:
            checks.append(DoctorCheck("firecracker.kvm", "warn", exc.message, exc.details))
        try:
            image = await asyncio.to_thread(self._image)
            checks.append(DoctorCheck("firecracker.kernel", "pass", f"ELF vmlinux {image.vmlinux}"))
            await asyncio.to_thread(verify_boot_image, image)
            checks.append(
                DoctorCheck("firecracker.rootfs", "pass", f"rootfs {image.rootfs} verified")
            )
            checks.append(
                DoctorCheck("firecracker.boot", "pass", image.describe(), {"boot": image.boot})
            )
        except CleanroomError as exc:
            checks.append(DoctorCheck("firecracker.image", "warn", exc.message, exc.details))
        return checks
