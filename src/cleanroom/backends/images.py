"""Which guest image a backend boots: the runtime config's explicit files, else
the cached image for the current inputs."""

from __future__ import annotations

from pathlib import Path

from cleanroom.errors import ConfigInvalid, ImageUnavailable
from cleanroom.images import GuestImage, current_image, image_from_paths

__all__ = ["resolve_image"]


def resolve_image(
    section: str,
    kernel: Path | None,
    initrd: Path | None,
    rootfs: Path | None,
    vmlinux: Path | None = None,
) -> GuestImage:
    """The image to boot.

    With all of ``kernel``, ``initrd`` and ``rootfs`` configured those files are
    used as given; with only some of them configured that is a ``ConfigInvalid``;
    with none, the built image for the current inputs (``ImageUnavailable`` if
    it has not been built: run ``cleanroom image build``).
    """
    given = {"kernel_image": kernel, "initrd": initrd, "rootfs": rootfs}
    if all(v is not None for v in given.values()):
        assert kernel is not None
        assert initrd is not None
        assert rootfs is not None
        return image_from_paths(kernel, initrd, rootfs, vmlinux=vmlinux)
    if any(v is not None for v in given.values()):
        missing = sorted(k for k, v in given.items() if v is None)
        raise ConfigInvalid(
            f"backends.{section}: set all of kernel_image, initrd and rootfs, or none",
            details={"section": section, "missing": missing},
        )
    image = current_image()
    if image is None:
        raise ImageUnavailable(
            "no guest image is built for the current inputs; run `cleanroom image build`",
            details={"hint": "cleanroom image build"},
        )
    return image
