"""Cached canary verdicts: whether a guest really boots under a VMM + KVM on this host.

Opening /dev/kvm proves nothing (a paravirtual KVM can accept the ioctls and
then fail to emulate the guest kernel's first ``xrstor``), so backends boot the
configured image once and keep the verdict in ``cache_dir()/accel-verdicts.json``,
keyed by whatever the backend says the verdict depends on (host KVM identity,
VMM version, image digest). Shared by every KVM-using backend.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cleanroom import paths

__all__ = ["AccelVerdict", "Canary", "VerdictCache", "cached_verdict"]

Canary = Callable[[], Awaitable[tuple[bool, str]]]
"""Boots the image under KVM: ``(booted, reason)``. Must clean up after itself."""


@dataclass(frozen=True)
class AccelVerdict:
    """Whether KVM boots the image on this host, and why."""

    key: str
    kvm_works: bool
    reason: str
    checked_at: str


class VerdictCache:
    """A small JSON file of verdicts; unreadable or malformed entries are ignored."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else paths.cache_dir() / "accel-verdicts.json"

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> AccelVerdict | None:
        """The cached verdict for ``key``, or None."""
        entry = self._load().get(key)
        if not isinstance(entry, dict):
            return None
        kvm_works, reason, checked = (
            entry.get("kvm_works"),
            entry.get("reason"),
            entry.get("checked_at"),
        )
        if not isinstance(kvm_works, bool):
            return None
        if not (isinstance(reason, str) and isinstance(checked, str)):
            return None
        return AccelVerdict(key=key, kvm_works=kvm_works, reason=reason, checked_at=checked)

    def put(self, verdict: AccelVerdict) -> None:
        """Store ``verdict`` atomically (write a temp file, rename over)."""
        data = self._load()
        entry = asdict(verdict)
        del entry["key"]
        data[verdict.key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".accel-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.write("\n")
            Path(tmp).replace(self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


async def cached_verdict(cache: VerdictCache, key: str, canary: Canary) -> AccelVerdict:
    """The verdict stored under ``key``; without one, run ``canary`` once and store its."""
    verdict = cache.get(key)
    if verdict is None:
        booted, reason = await canary()
        verdict = AccelVerdict(
            key=key,
            kvm_works=booted,
            reason=reason,
            checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        cache.put(verdict)
    return verdict
