"""The ``backends.qemu`` section of the runtime config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from cleanroom._yaml import YamlEntry
from cleanroom.backends.vmsettings import VMM_KEYS, VmmSettings
from cleanroom.config_reader import SectionReader

__all__ = ["QemuAccel", "QemuConfig"]

QemuAccel = Literal["auto", "kvm", "tcg"]
_ACCELS: tuple[QemuAccel, ...] = ("auto", "kvm", "tcg")


@dataclass(frozen=True)
class QemuConfig(VmmSettings):
    """Settings of the QEMU backend; ``accel: auto`` takes KVM only where a canary boots."""

    accel: QemuAccel = "auto"
    snapshots: bool = True
    """Restore guests from a snapshot of a booted guest of the built-in image when
    one fits the run (made on first use); ``snapshots: off`` always boots cold."""
    unprivileged: bool = True
    """Run each guest's QEMU as a uid of its own where the host allows (a root
    server, setpriv, world-readable kernel and initrd); ``off``: as the server's user."""

    KEYS: ClassVar[tuple[str, ...]] = (*VMM_KEYS, "accel", "snapshots", "unprivileged")

    @classmethod
    def _own_fields(
        cls, reader: SectionReader, section: dict[str, YamlEntry], path: str
    ) -> dict[str, Any]:
        return {
            "accel": reader.choice(section, "accel", path, _ACCELS, "auto"),
            "snapshots": reader.choice(section, "snapshots", path, ("on", "off"), "on") == "on",
            "unprivileged": reader.choice(section, "unprivileged", path, ("on", "off"), "on")
            == "on",
        }
