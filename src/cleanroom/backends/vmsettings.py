"""The settings every VMM backend's config section shares (``backends.<name>``).

A backend's section class extends :class:`VmmSettings` with its own fields,
``KEYS`` and ``_own_fields``; the runtime config finds it through
:mod:`cleanroom.backend_table` and calls ``parse``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from cleanroom._yaml import YamlEntry
from cleanroom.config_reader import SectionReader

__all__ = ["MAX_VCPUS", "MIN_MEMORY_MIB", "VMM_KEYS", "VmmSettings"]

MAX_VCPUS = 32
MIN_MEMORY_MIB = 32
VMM_KEYS = (
    "binary_path",
    "kernel_image",
    "initrd",
    "rootfs",
    "vcpus",
    "memory_mib",
    "launch_seconds",
)


@dataclass(frozen=True)
class VmmSettings:
    """What a VMM backend needs: its binary, the guest image files, the guest's size.

    ``binary_path`` None means the backend's default program on ``PATH``; a bare
    name (no ``/``) is looked up on ``PATH`` when the backend needs it. Image
    paths None mean the built guest image.
    """

    binary_path: Path | None = None
    kernel_image: Path | None = None
    initrd: Path | None = None
    rootfs: Path | None = None
    vcpus: int = 1
    memory_mib: int = 256
    launch_seconds: float = 60.0

    KEYS: ClassVar[tuple[str, ...]] = VMM_KEYS

    @classmethod
    def parse(cls, reader: SectionReader, section: dict[str, YamlEntry], path: str) -> Self:
        """The section from its entries; problems are recorded on ``reader``."""
        common: dict[str, Any] = {
            "binary_path": reader.optional_command(section, "binary_path", path),
            "kernel_image": reader.optional_path(section, "kernel_image", path),
            "initrd": reader.optional_path(section, "initrd", path),
            "rootfs": reader.optional_path(section, "rootfs", path),
            "vcpus": reader.integer(section, "vcpus", path, 1, minimum=1, maximum=MAX_VCPUS),
            "memory_mib": reader.integer(section, "memory_mib", path, 256, minimum=MIN_MEMORY_MIB),
            "launch_seconds": reader.seconds(section, "launch_seconds", path, 60.0),
        }
        return cls(**common, **cls._own_fields(reader, section, path))

    @classmethod
    def _own_fields(
        cls, reader: SectionReader, section: dict[str, YamlEntry], path: str
    ) -> dict[str, Any]:
        """The subclass's own fields read from ``section`` (none here)."""
        return {}
