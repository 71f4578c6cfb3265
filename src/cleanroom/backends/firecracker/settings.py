"""The ``backends.firecracker`` section of the runtime config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from cleanroom._yaml import YamlEntry
from cleanroom.backends.vmsettings import VMM_KEYS, VmmSettings
from cleanroom.config_reader import SectionReader

__all__ = ["MAX_GUEST_CID", "MIN_GUEST_CID", "FirecrackerConfig"]

MIN_GUEST_CID = 3  # 0-2 are reserved (hypervisor, local, host)
MAX_GUEST_CID = 0xFFFFFFFE  # 2**32 - 1 is VMADDR_CID_ANY


@dataclass(frozen=True)
class FirecrackerConfig(VmmSettings):
    """Settings of the Firecracker backend; ``guest_cid`` is the guest's vsock CID."""

    guest_cid: int = 3

    KEYS: ClassVar[tuple[str, ...]] = (*VMM_KEYS, "guest_cid")

    @classmethod
    def _own_fields(
        cls, reader: SectionReader, section: dict[str, YamlEntry], path: str
    ) -> dict[str, Any]:
        cid = reader.integer(
            section, "guest_cid", path, 3, minimum=MIN_GUEST_CID, maximum=MAX_GUEST_CID
        )
        return {"guest_cid": cid}
