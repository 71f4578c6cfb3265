"""Which guest image a backend boots: the runtime config's explicit files, else
the cached image for the current inputs.

Two ways to boot configured files:

- ``initramfs``: ``kernel_image``, ``initrd`` and ``rootfs`` all set; the
  initramfs loads the virtio drivers and switches into the rootfs (as the built
  image does);
- ``direct``: ``kernel_image`` and ``rootfs`` without ``initrd``; the kernel
  mounts the rootfs itself (``root=/dev/vda``) and starts the agent's init, so
  the kernel must have virtio-mmio, virtio-blk, ext4 and the agent channel's
  driver built in, and the rootfs must hold ``/sbin/cleanroom-init``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cleanroom.errors import ConfigInvalid, ImageUnavailable
from cleanroom.images import GuestImage, current_image, image_from_paths, verify_image

__all__ = [
    "AGENT_INIT",
    "DIRECT_BOOT_ARGS",
    "BootImage",
    "agent_boot_args",
    "configured_boot",
    "resolve_image",
    "verify_boot_image",
]

BootPath = Literal["initramfs", "direct"]

AGENT_INIT = "/sbin/cleanroom-init"
"""The agent's init in the rootfs (the initramfs switches into it; a direct boot runs it)."""

DIRECT_BOOT_ARGS = ("root=/dev/vda", "rootfstype=ext4", "rw", f"init={AGENT_INIT}")
"""Kernel arguments that make a kernel without an initramfs mount the rootfs and
start the agent's init."""


_FROM_IMAGE = ("kernel", "vmlinux", "initrd", "rootfs", "digest", "kernel_version", "path")
"""The ``BootImage`` fields a ``GuestImage`` has under the same names."""


def agent_boot_args(channel: str, *, direct: bool, debug: bool) -> list[str]:
    """The kernel arguments the image's boot reads: root device, agent channel
    (``virtio-serial:<port name>`` or ``vsock:<port>``), a direct boot's
    ``DIRECT_BOOT_ARGS``, and the debug switch."""
    args = ["cleanroom.root=/dev/vda", f"cleanroom.channel={channel}"]
    if direct:
        args.extend(DIRECT_BOOT_ARGS)
    if debug:
        args.append("cleanroom.debug=1")
    return args


@dataclass(frozen=True)
class BootImage:
    """The files a VMM boots: kernel (bzImage or ELF), ELF vmlinux, initramfs or None
    (a direct boot), and the read-only base rootfs each run copies."""

    kernel: Path
    vmlinux: Path
    initrd: Path | None
    rootfs: Path
    digest: str
    """The built image's digest, or ``user-provided`` for configured files."""
    kernel_version: str
    path: Path
    """The image's directory (the rootfs's for configured files)."""
    image: GuestImage | None = None
    """The image behind these files; None for a direct boot of configured files."""

    @classmethod
    def of(cls, image: GuestImage) -> BootImage:
        """The files of ``image`` (booted through its initramfs)."""
        shared = {name: getattr(image, name) for name in _FROM_IMAGE}
        return cls(**shared, image=image)

    @property
    def boot(self) -> BootPath:
        """``initramfs`` or ``direct`` (see the module docstring)."""
        return "direct" if self.initrd is None else "initramfs"

    def describe(self) -> str:
        """How this image boots and what it needs, for ``doctor``."""
        if self.initrd is not None:
            return f"boots through the initramfs {self.initrd}"
        return (
            f"boots {self.kernel} directly without an initramfs: the kernel needs virtio-mmio, "
            f"virtio-blk, ext4 and the agent channel built in; {self.rootfs} needs {AGENT_INIT}"
        )


def configured_boot(
    section: str,
    kernel: Path | None,
    initrd: Path | None,
    rootfs: Path | None,
    vmlinux: Path | None = None,
) -> BootImage | None:
    """The configured files as a ``BootImage`` (files not checked), or None when none
    is configured; ``ConfigInvalid`` when ``kernel_image`` or ``rootfs`` is missing."""
    given = {"kernel_image": kernel, "initrd": initrd, "rootfs": rootfs}
    if all(v is None for v in given.values()):
        return None
    if kernel is None or rootfs is None:
        missing = sorted(k for k in ("kernel_image", "rootfs") if given[k] is None)
        raise ConfigInvalid(
            f"backends.{section}: set kernel_image and rootfs (and initrd to boot through "
            "an initramfs), or none of them",
            details={"section": section, "missing": missing},
        )
    return BootImage(
        kernel=kernel,
        vmlinux=vmlinux if vmlinux is not None else kernel,
        initrd=initrd,
        rootfs=rootfs,
        digest="user-provided",
        kernel_version="unknown",
        path=rootfs.parent,
    )


def resolve_image(
    section: str,
    kernel: Path | None,
    initrd: Path | None,
    rootfs: Path | None,
    vmlinux: Path | None = None,
) -> BootImage:
    """The image to boot.

    Configured files are used as given (every one must exist: else
    ``ImageUnavailable`` naming it; see :func:`configured_boot` for the allowed
    sets); with none configured, the built image for the current inputs
    (``ImageUnavailable`` if it has not been built: run ``cleanroom image build``).
    """
    boot = configured_boot(section, kernel, initrd, rootfs, vmlinux)
    if boot is not None and boot.initrd is not None:
        return BootImage.of(image_from_paths(boot.kernel, boot.initrd, boot.rootfs, vmlinux))
    if boot is not None:
        _require_files(boot)
        return boot
    image = current_image()
    if image is None:
        raise ImageUnavailable(
            "no guest image is built for the current inputs; run `cleanroom image build`",
            details={"hint": "cleanroom image build"},
        )
    return BootImage.of(image)


def _require_files(boot: BootImage) -> None:
    roles = {"kernel": boot.kernel, "vmlinux": boot.vmlinux, "rootfs": boot.rootfs}
    for role, path in roles.items():
        if not path.is_file():
            raise ImageUnavailable(
                f"user-provided {role} image {path} does not exist or is not a file",
                details={"file": str(path), "role": role},
            )


def verify_boot_image(boot: BootImage) -> None:
    """Check the image's files (sha256 against the manifest of a built image; presence
    for configured files). Raises ``ImageUnavailable`` naming the first bad file."""
    if boot.image is not None:
        verify_image(boot.image)
    else:
        _require_files(boot)
