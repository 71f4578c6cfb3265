"""The QEMU microvm backend: resolve binary, image and accelerator; launch guests."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import replace
from pathlib import Path

from cleanroom.backends.base import Capabilities, Guest, GuestSpec, Isolation, NoRestore
from cleanroom.backends.hostinfo import (
    KVM_DEVICE,
    host_kvm_identity,
    host_tsc_khz,
    vmm_version,
)
from cleanroom.backends.images import BootImage, verify_boot_image
from cleanroom.backends.process import pdeathsig_prefix
from cleanroom.backends.qemu.accel import AccelVerdict, VerdictCache, resolve_accel, verdict_key
from cleanroom.backends.qemu.argv import Accel
from cleanroom.backends.qemu.guest import QemuGuest, QemuMachine
from cleanroom.backends.qemu.privilege import VMM_UID_BASE, unprivileged_blocker
from cleanroom.backends.qemu.restore import restore_guest
from cleanroom.backends.qemu.settings import QemuConfig
from cleanroom.backends.qemu.snapshot import image_facts
from cleanroom.backends.qemu.snapshots import Snapshots
from cleanroom.backends.vmbackend import VmBackend
from cleanroom.doctor import DoctorCheck
from cleanroom.errors import BackendUnavailable, CleanroomError
from cleanroom.images.snapshots import (
    SNAPSHOTS_DIR_NAME,
    Snapshot,
    SnapshotCache,
    SnapshotInvalid,
)
from cleanroom.images.userimage import UserImage

__all__ = ["DEFAULT_QEMU_BINARY", "KVM_CANARY_SECONDS", "QemuBackend", "qemu_version"]

DEFAULT_QEMU_BINARY = "qemu-system-x86_64"
KVM_CANARY_SECONDS = 10.0
"""A guest that KVM really runs reaches its agent in well under 2 s; a broken KVM
(e.g. a paravirtual one that stock kernels crash or hang under) never does, so
waiting longer only delays the fall-back to TCG, once per image."""

USER_PROVIDED = "user-provided"
_VERSION = re.compile(r"version\s+([0-9][^\s(]*)")


def qemu_version(binary: str) -> str:
    """``X.Y.Z`` from ``binary --version``; ``BackendUnavailable`` if it does not run."""
    return vmm_version(binary, _VERSION)


class QemuBackend(VmBackend[QemuConfig, QemuMachine, QemuGuest]):
    """``qemu-system-x86_64 -M microvm``; implements ``cleanroom.backends.base.Backend``."""

    name = "qemu"
    default_binary = DEFAULT_QEMU_BINARY
    not_on_path = f"{DEFAULT_QEMU_BINARY} is not on PATH (install qemu-system-x86)"

    def __init__(self, config: QemuConfig, *, verdicts: VerdictCache | None = None) -> None:
        super().__init__(config, verdicts=verdicts)
        self.verdict: AccelVerdict | None = None
        """The KVM canary verdict behind the chosen accel (None if none was needed)."""
        self.snapshots: Snapshots | None = None
        """The snapshot guests are restored from, after ``prepare`` (None: see
        ``_no_snapshots``)."""
        self._no_snapshots = "snapshots are off in the runtime config"
        self._snapshot_inputs: tuple[str, str, str, str] | None = None
        """(QEMU version, built-in image digest, agent version, kernel version) once
        snapshots are possible."""
        self._user_snapshots: dict[tuple[str, Path, str | int | bool | None], Snapshots] = {}
        """The snapshots of each user image a run used, by (key, file, file identity)."""

    def _image(self) -> BootImage:
        return self._configured_image()

    def _qemu_img(self, binary: str) -> str:
        sibling = Path(binary).with_name("qemu-img")
        return str(sibling) if sibling.is_file() else "qemu-img"

    def _machine_for(
        self, binary: str, image: BootImage, accel: Accel, tsc_khz: int | None = None
    ) -> QemuMachine:
        return QemuMachine(
            binary=binary,
            kernel=image.kernel,
            initrd=image.initrd,
            rootfs=image.rootfs,
            accel=accel,
            vcpus=self._config.vcpus,
            memory_mib=self._config.memory_mib,
            tsc_khz=tsc_khz,
            qemu_img=self._qemu_img(binary),
            unprivileged=self._privilege_blocker(image) is None,
        )

    def _privilege_blocker(self, image: BootImage) -> str | None:
        """Why guests' QEMU runs as the server's user (None: each as a uid of its own)."""
        if not self._config.unprivileged:
            return "backends.qemu.unprivileged is off"
        files = [image.kernel] if image.initrd is None else [image.kernel, image.initrd]
        return unprivileged_blocker(files)

    async def _start(self, machine: QemuMachine, spec: GuestSpec) -> QemuGuest:
        return await QemuGuest.start(machine, spec)

    async def _resolve(self) -> tuple[QemuMachine, Capabilities]:
        binary = self.find_binary()
        pdeathsig_prefix()  # fails early, naming setpriv, if it is missing
        version = await asyncio.to_thread(qemu_version, binary)
        image = await asyncio.to_thread(self._image)
        canary_machine = replace(self._machine_for(binary, image, "kvm"), vcpus=1)
        accel: Accel
        accel, self.verdict = await resolve_accel(
            self._config.accel,
            qemu_version=version,
            image_digest=image.digest,
            canary=lambda: self._canary(
                canary_machine, name="kvm-canary", label="KVM", seconds=KVM_CANARY_SECONDS
            ),
            cache=self._verdicts,
        )
        tsc = await asyncio.to_thread(host_tsc_khz) if accel == "tcg" else None
        machine = self._machine_for(binary, image, accel, tsc)
        isolation: Isolation = "qemu-kvm" if accel == "kvm" else "qemu-tcg"
        self._setup_snapshots(machine, image, version)
        return machine, self._capabilities(version, isolation)

    def _setup_snapshots(self, machine: QemuMachine, image: BootImage, version: str) -> None:
        if not self._config.snapshots:
            return
        if image.image is None or image.digest == USER_PROVIDED:
            self._no_snapshots = "the configured image files have no digest to key a snapshot by"
            return
        self._snapshot_inputs = (
            version,
            image.digest,
            image.image.agent_version,
            image.kernel_version,
        )
        self.snapshots = Snapshots(
            machine,
            SnapshotCache(image.path / SNAPSHOTS_DIR_NAME),
            qemu_version=version,
            image_digest=image.digest,
            agent_version=image.image.agent_version,
            kernel_version=image.kernel_version,
            boot_seconds=self._config.launch_seconds,
        )

    def snapshots_for(self, image: UserImage | None) -> Snapshots | NoRestore:
        """The snapshots of guests in ``image`` (None: the built-in image), or why
        there are none; a user image's are cached in its own cache entry, so
        removing the image removes them. Call after ``prepare``."""
        if self.snapshots is None or self._snapshot_inputs is None:
            return NoRestore(self._no_snapshots)
        if image is None:
            return self.snapshots
        try:
            # The file's identity is part of the key: a file replaced under the same
            # path is another disk, whose guests need snapshots of their own.
            ident = (image.key, image.rootfs, image_facts(image)["user_image_file"])
        except OSError as exc:
            return NoRestore(f"the user image's file is unreadable: {exc.strerror or exc}")
        found = self._user_snapshots.get(ident)
        if found is None:
            version, digest, agent, kernel = self._snapshot_inputs
            try:
                found = Snapshots(
                    self.snapshots.machine,
                    SnapshotCache(image.rootfs.parent / SNAPSHOTS_DIR_NAME),
                    qemu_version=version,
                    image_digest=digest,
                    agent_version=agent,
                    kernel_version=kernel,
                    boot_seconds=self._config.launch_seconds,
                    image=image,
                )
            except OSError as exc:
                return NoRestore(f"the user image's file is unreadable: {exc.strerror or exc}")
            self._user_snapshots[ident] = found
        return found

    async def restore(self, spec: GuestSpec) -> Guest | NoRestore:
        """See ``cleanroom.backends.base.Restorer.restore`` (prepares first if needed)."""
        if self._machine is None:
            await self.prepare()
        assert self._machine is not None
        snapshots = self.snapshots_for(spec.image)
        if isinstance(snapshots, NoRestore):
            return snapshots
        unfit = snapshots.unfit(spec)
        if unfit is not None:
            return NoRestore(unfit)
        found = await snapshots.find(nic=spec.network is not None)
        if isinstance(found, NoRestore):
            return found
        try:
            ram_fd = await snapshots.rams.open(found)
        except SnapshotInvalid as exc:
            return NoRestore(exc.reason)
        try:
            return await restore_guest(self._machine, spec, found, ram_fd)
        finally:
            os.close(ram_fd)  # QEMU has its own

    async def warm(self, image: UserImage | None = None) -> Snapshot:
        """Make both snapshots (without and with a NIC) of guests in ``image`` (None:
        the built-in image) now unless valid ones exist (``cleanroom image warm``);
        returns the one without a NIC.

        Raises ``BackendUnavailable`` when snapshots are off or impossible for the
        configured image, ``RuntimeLaunchFailed`` when making one fails.
        """
        await self.prepare()
        snapshots = self.snapshots_for(image)
        if isinstance(snapshots, NoRestore):
            raise BackendUnavailable(snapshots.reason)
        plain = await snapshots.ensure()
        await snapshots.ensure(nic=True)
        return plain

    async def close(self) -> None:
        """Stop snapshots being made in the background."""
        for snapshots in (self.snapshots, *self._user_snapshots.values()):
            if snapshots is not None:
                await snapshots.close()

    @property
    def machine(self) -> QemuMachine | None:
        """The resolved machine after ``prepare`` (for diagnostics and tests)."""
        return self._machine

    async def doctor(self) -> list[DoctorCheck]:
        checks: list[DoctorCheck] = []
        binary: str | None = None
        version: str | None = None
        try:
            binary = self.find_binary()
            version = await asyncio.to_thread(qemu_version, binary)
            checks.append(
                DoctorCheck("qemu.binary", "pass", f"{binary} {version}", {"version": version})
            )
        except BackendUnavailable as exc:
            checks.append(DoctorCheck("qemu.binary", "fail", exc.message, exc.details))
        identity = host_kvm_identity()
        if identity is None:
            checks.append(
                DoctorCheck("qemu.kvm", "warn", f"{KVM_DEVICE} unavailable; guests use TCG")
            )
        else:
            checks.append(DoctorCheck("qemu.kvm", "pass", f"{KVM_DEVICE} present ({identity})"))
        image: BootImage | None = None
        try:
            image = await asyncio.to_thread(self._image)
            await asyncio.to_thread(verify_boot_image, image)
            checks.append(
                DoctorCheck(
                    "qemu.image",
                    "pass",
                    f"image {image.digest[:12]} verified (kernel {image.kernel_version})",
                    {"digest": image.digest, "path": str(image.path)},
                )
            )
            checks.append(DoctorCheck("qemu.boot", "pass", image.describe(), {"boot": image.boot}))
        except CleanroomError as exc:
            checks.append(DoctorCheck("qemu.image", "fail", exc.message, exc.details))
        checks.append(self._accel_check(identity, version, image))
        if image is not None:
            checks.append(self._privileges_check(image))
        return checks

    def _privileges_check(self, image: BootImage) -> DoctorCheck:
        """``qemu.privileges``: whether guests' QEMU drops to a uid of its own, in
        mount and pid namespaces of its own (a warning when it cannot)."""
        blocker = self._privilege_blocker(image)
        if blocker is not None:
            return DoctorCheck(
                "qemu.privileges", "warn", f"QEMU runs as the server's user: {blocker}"
            )
        return DoctorCheck(
            "qemu.privileges",
            "pass",
            f"each guest's QEMU runs as a uid of its own from {VMM_UID_BASE}, "
            "as pid 1 of its own pid namespace, in a mount namespace of its own",
            {"uid_base": VMM_UID_BASE, "namespaces": ["mnt", "pid"]},
        )

    def _accel_check(
        self, identity: str | None, version: str | None, image: BootImage | None
    ) -> DoctorCheck:
        requested = self._config.accel
        if requested == "tcg":
            return _tcg_check("accel tcg (configured)")
        if requested != "auto":
            return DoctorCheck("qemu.accel", "pass", f"accel {requested} (configured)")
        if identity is None:
            return _tcg_check("accel tcg (no KVM)")
        if version is None or image is None:
            return DoctorCheck("qemu.accel", "warn", "KVM canary not possible yet")
        verdict = self._verdicts.get(verdict_key(identity, version, image.digest))
        if verdict is None:
            return DoctorCheck(
                "qemu.accel", "warn", "KVM canary not run yet (runs on first launch)"
            )
        details = {"checked_at": verdict.checked_at, "kvm_works": verdict.kvm_works}
        if not verdict.kvm_works:
            return _tcg_check(f"accel tcg: {verdict.reason}", details)
        return DoctorCheck("qemu.accel", "pass", f"accel kvm: {verdict.reason}", details)


TCG_WARNING = (
    "guests are emulated (TCG): not a security boundary (QEMU's security policy); "
    "use KVM to isolate untrusted code"
)


def _tcg_check(reason: str, details: dict[str, object] | None = None) -> DoctorCheck:
    """The ``qemu.accel`` warning for emulated guests."""
    return DoctorCheck(
        "qemu.accel",
        "warn",
        f"{reason}; {TCG_WARNING}",
        {**(details or {}), "isolation": "qemu-tcg", "security_boundary": False},
    )
