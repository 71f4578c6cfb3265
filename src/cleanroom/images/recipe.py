"""The image recipe and its inputs: what goes into an image, and the digest naming it.

The digest covers every input that can change the built artifacts: the
recipe version (bumped whenever the build steps change), every Debian
package's name, version and .deb sha256, the agent's source files, the
generated init scripts and the module list. Computing it is cheap: package
candidates come from a cache keyed by apt's state (see
:mod:`cleanroom.images.debian`), agent sources are a few small files.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.errors import ImageUnavailable
from cleanroom.images.debian import DebPackage, resolve_packages
from cleanroom.images.initramfs import init_script
from cleanroom.images.rootfs import guest_init_script

__all__ = [
    "IMAGE_MODULES",
    "INITRAMFS_COMPRESS",
    "KERNEL_METAPACKAGE",
    "OPTIONAL_MODULES",
    "RECIPE_VERSION",
    "REQUIRED_MODULES",
    "ROOTFS_PACKAGES",
    "BuildInputs",
    "agent_source_dir",
    "agent_sources",
    "agent_version",
    "resolve_inputs",
]

#: Bump whenever the build steps change in a way that changes the artifacts.
RECIPE_VERSION = 3

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"

#: Python's interpreter and stdlib plus the libraries its modules link against
#: (json, socket, ssl, tarfile, selectors, subprocess, ctypes, sqlite3, ...).
#: Left out on purpose: libnsl2/libtirpc3 (only the ``nis`` module; they pull
#: in Kerberos) and tzdata (``zoneinfo`` falls back to UTC).
ROOTFS_PACKAGES: tuple[str, ...] = (
    "busybox-static",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "media-types",
    "libc6",
    "libssl3",
    "libffi8",
    "zlib1g",
    "libexpat1",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "readline-common",
    "libuuid1",
    "libdb5.3",
    "libcrypt1",
)

#: Loaded by the initramfs in this order (virtio over MMIO, disk, console, net, rng).
REQUIRED_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio-rng",
)
#: Loaded only when a user image is attached (``cleanroom.image=1``): the agent
#: lays the run's writable layer over the read-only image with overlayfs.
IMAGE_MODULES: tuple[str, ...] = ("overlay",)
#: Loaded if the kernel has them (Firecracker's agent channel is vsock).
OPTIONAL_MODULES: tuple[str, ...] = (
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
)

#: Whether the initramfs is gzip-compressed. Measured under TCG: the kernel
#: unpacks the 2.7 MiB plain cpio in 0.22-0.34 s and the 1.2 MiB gzip one in
#: 0.39-0.60 s, so the plain archive boots faster.
INITRAMFS_COMPRESS = False


def agent_source_dir() -> Path:
    """The directory of the ``cleanroom.agent`` package on the host."""
    spec = importlib.util.find_spec("cleanroom.agent")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImageUnavailable("the cleanroom.agent package cannot be found")
    return Path(locations[0])


def agent_sources(directory: Path) -> dict[str, bytes]:
    """Every ``*.py`` file of the agent package by name; it must have ``guest.py``."""
    files = {p.name: p.read_bytes() for p in sorted(directory.glob("*.py")) if p.is_file()}
    if "guest.py" not in files:
        raise ImageUnavailable(
            f"the agent package at {directory} has no guest.py; cannot build a bootable image"
        )
    return files


def _sources_hash(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def agent_version(files: dict[str, bytes], *, from_package: bool = True) -> str:
    """``cleanroom.agent.protocol.AGENT_VERSION`` if importable, else ``src-<hash of sources>``.

    ``from_package=False`` (sources from elsewhere than the installed package)
    always uses the hash.
    """
    if not from_package:
        return f"src-{_sources_hash(files)[:16]}"
    try:
        protocol = importlib.import_module("cleanroom.agent.protocol")
        version = getattr(protocol, "AGENT_VERSION", None)
    except (ImportError, SyntaxError):
        version = None
    if version is not None:
        return str(version)
    return f"src-{_sources_hash(files)[:16]}"


@dataclass(frozen=True)
class BuildInputs:
    """Everything an image is built from; :attr:`digest` names the result."""

    kernel_meta: DebPackage
    kernel: DebPackage
    rootfs_packages: tuple[DebPackage, ...]
    agent_files: dict[str, bytes]
    agent_version: str
    initramfs_init: str
    guest_init: str
    required_modules: tuple[str, ...] = REQUIRED_MODULES
    optional_modules: tuple[str, ...] = OPTIONAL_MODULES
    image_modules: tuple[str, ...] = IMAGE_MODULES
    initramfs_compress: bool = INITRAMFS_COMPRESS
    recipe_version: int = RECIPE_VERSION

    def describe(self) -> dict[str, Any]:
        """The canonical description hashed into the digest."""
        return {
            "recipe_version": self.recipe_version,
            "packages": [
                p.to_dict() for p in (self.kernel_meta, self.kernel, *self.rootfs_packages)
            ],
            "agent_sources": {
                name: hashlib.sha256(data).hexdigest()
                for name, data in sorted(self.agent_files.items())
            },
            "agent_version": self.agent_version,
            "initramfs_init_sha256": hashlib.sha256(self.initramfs_init.encode()).hexdigest(),
            "guest_init_sha256": hashlib.sha256(self.guest_init.encode()).hexdigest(),
            "modules": {
                "required": list(self.required_modules),
                "optional": list(self.optional_modules),
                "image": list(self.image_modules),
            },
            "initramfs_compress": self.initramfs_compress,
        }

    @property
    def digest(self) -> str:
        """sha256 of :meth:`describe` as canonical JSON."""
        blob = json.dumps(self.describe(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


def resolve_inputs(*, agent_dir: Path | None = None, cache_file: Path | None = None) -> BuildInputs:
    """Resolve the current inputs (apt candidates, agent sources). Cheap when cached."""
    packages = resolve_packages(KERNEL_METAPACKAGE, ROOTFS_PACKAGES, cache_file=cache_file)
    files = agent_sources(agent_dir if agent_dir is not None else agent_source_dir())
    return BuildInputs(
        kernel_meta=packages[0],
        kernel=packages[1],
        rootfs_packages=tuple(packages[2:]),
        agent_files=files,
        agent_version=agent_version(files, from_package=agent_dir is None),
        initramfs_init=init_script(REQUIRED_MODULES, OPTIONAL_MODULES, IMAGE_MODULES),
        guest_init=guest_init_script(),
    )
