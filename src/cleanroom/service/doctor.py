"""Host readiness checks: those that need no backend, and each backend's own.

:func:`host_checks` and :func:`backend_checks` are what the server's ``doctor``
reports; :func:`local_checks` runs the same checks in the calling process, for
``cleanroom doctor`` when no server answers.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from cleanroom import paths
from cleanroom.backend_table import backend_names
from cleanroom.backends import Backend, get_backend, resolve_backend_name
from cleanroom.config import RuntimeConfig
from cleanroom.errors import CleanroomError
from cleanroom.service.types import DoctorCheck

__all__ = ["backend_checks", "host_checks", "local_checks"]


async def backend_checks(
    name: str, default: str, backend: Backend | CleanroomError
) -> list[DoctorCheck]:
    """Backend ``name``'s own checks (``backend``: it, or why it could not be made); a
    backend that cannot be made or checked fails for the ``default`` backend, and is a
    warning for the others."""
    try:
        if isinstance(backend, CleanroomError):
            raise backend
        # Copied into the service's own check type (it may differ from the backend's).
        return [DoctorCheck(c.name, c.status, c.reason, c.details) for c in await backend.doctor()]
    except CleanroomError as exc:
        status: Literal["fail", "warn"] = "fail" if name == default else "warn"
        return [DoctorCheck(f"backend.{name}", status, exc.message)]


async def local_checks(config: RuntimeConfig) -> list[DoctorCheck]:
    """The host's and every backend's checks, run here (no server, no guest booted)."""
    checks = await asyncio.to_thread(host_checks)
    try:
        default = resolve_backend_name(None, config)
    except CleanroomError as exc:
        checks.append(DoctorCheck("backend", "fail", exc.message, exc.details))
        default = ""
    for name in backend_names():
        try:
            be = get_backend(name, config)
        except CleanroomError as exc:
            checks.extend(await backend_checks(name, default, exc))
            continue
        try:
            checks.extend(await backend_checks(name, default, be))
        finally:
            await be.close()
    return checks


def host_checks() -> list[DoctorCheck]:
    """Linux, /dev/kvm, ``ip``/``nft``, privileges, writable XDG dirs, guest image."""
    checks = [_linux(), _kvm_device(), _privileges()]
    checks.extend(_tool(name, args) for name, args in (("ip", ["-V"]), ("nft", ["--version"])))
    checks.extend(_writable(name, fn()) for name, fn in _DIRS)
    checks.append(_image())
    return checks


_DIRS = (
    ("dirs.config", paths.config_dir),
    ("dirs.state", paths.state_dir),
    ("dirs.cache", paths.cache_dir),
    ("dirs.runtime", paths.runtime_dir),
)


def _linux() -> DoctorCheck:
    system = platform.system()
    if system != "Linux":
        return DoctorCheck("host.linux", "fail", f"cleanroom needs Linux, this is {system}")
    return DoctorCheck("host.linux", "pass", f"Linux {platform.release()} {platform.machine()}")


def _kvm_device() -> DoctorCheck:
    dev = Path("/dev/kvm")
    if not dev.exists():
        return DoctorCheck("host.kvm_device", "warn", "/dev/kvm is absent: guests use emulation")
    if not os.access(dev, os.R_OK | os.W_OK):
        return DoctorCheck("host.kvm_device", "warn", "/dev/kvm exists but is not read-writable")
    return DoctorCheck(
        "host.kvm_device",
        "pass",
        "/dev/kvm is present (whether a guest boots under it is the backend's canary check)",
    )


def _privileges() -> DoctorCheck:
    if os.geteuid() == 0:
        return DoctorCheck("host.privileges", "pass", "running as root")
    sudo = shutil.which("sudo")
    if sudo:
        ok = subprocess.run([sudo, "-n", "true"], capture_output=True, check=False).returncode
        if ok == 0:
            return DoctorCheck("host.privileges", "pass", "passwordless sudo is available")
    return DoctorCheck(
        "host.privileges",
        "warn",
        "not root and no passwordless sudo: egress enforcement (ip, nft, sysctl) is unavailable",
    )


def _tool(name: str, args: list[str]) -> DoctorCheck:
    exe = shutil.which(name)
    if exe is None:
        return DoctorCheck(f"tools.{name}", "warn", f"{name} not found on PATH")
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return DoctorCheck(f"tools.{name}", "warn", f"{name} failed to run: {exc}")
    if out.returncode != 0:
        return DoctorCheck(f"tools.{name}", "warn", f"{name} exited {out.returncode}")
    first = (out.stdout or out.stderr).strip().splitlines()
    return DoctorCheck(f"tools.{name}", "pass", first[0] if first else exe)


def _writable(name: str, directory: Path) -> DoctorCheck:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
    except OSError as exc:
        return DoctorCheck(name, "fail", f"{directory} is not writable: {exc.strerror}")
    return DoctorCheck(name, "pass", f"{directory} is writable")


def _image() -> DoctorCheck:
    from cleanroom.errors import CleanroomError  # noqa: PLC0415 - keep doctor import light
    from cleanroom.images import current_image, verify_image  # noqa: PLC0415

    try:
        image = current_image()
        if image is None:
            return DoctorCheck(
                "image", "warn", "no guest image built yet: `cleanroom image build` builds one"
            )
        verify_image(image)
    except CleanroomError as exc:
        return DoctorCheck("image", "fail", exc.message)
    return DoctorCheck(
        "image", "pass", f"image {image.digest[:12]} verified ({image.kernel_version})"
    )
