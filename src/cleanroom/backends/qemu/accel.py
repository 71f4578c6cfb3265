"""Choosing QEMU's accelerator: KVM only where a real canary guest boots under it.

Opening /dev/kvm proves nothing (a paravirtual KVM can accept the ioctls and
then fail to emulate the guest kernel's first ``xrstor``), so ``auto`` boots the
configured image under KVM once and waits for its agent. The verdict is cached
in ``cache_dir()/accel-verdicts.json`` keyed by host KVM identity (kernel
release + /dev/kvm device), QEMU version and image digest.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cleanroom import paths
from cleanroom.backends.hostinfo import host_kvm_identity
from cleanroom.errors import BackendUnavailable, ConfigInvalid

__all__ = [
    "AccelVerdict",
    "Canary",
    "VerdictCache",
    "resolve_accel",
    "verdict_key",
]

Canary = Callable[[], Awaitable[tuple[bool, str]]]
"""Boots the image under KVM: ``(booted, reason)``. Must clean up after itself."""


@dataclass(frozen=True)
class AccelVerdict:
    """Whether KVM boots the image on this host, and why."""

    key: str
    kvm_works: bool
    reason: str
    checked_at: str


def verdict_key(kvm_identity: str, qemu_version: str, image_digest: str) -> str:
    """The cache key: a verdict is only valid for this host KVM, QEMU and image."""
    return f"{kvm_identity}|qemu:{qemu_version}|image:{image_digest}"


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


async def resolve_accel(
    requested: str,
    *,
    qemu_version: str,
    image_digest: str,
    canary: Canary,
    cache: VerdictCache,
    kvm_identity: Callable[[], str | None] = host_kvm_identity,
) -> tuple[Literal["kvm", "tcg"], AccelVerdict | None]:
    """Pick ``kvm`` or ``tcg`` for ``requested`` (``auto``, ``kvm`` or ``tcg``).

    ``tcg`` needs nothing. ``kvm`` is taken as an explicit order (only
    /dev/kvm must exist; the operator asked for it). ``auto`` returns ``kvm``
    only if the cached or fresh canary verdict says KVM booted this image.
    ``kvm_identity`` names this host's KVM (None: no usable /dev/kvm).
    """
    if requested == "tcg":
        return "tcg", None
    identity = kvm_identity()
    if requested == "kvm":
        if identity is None:
            raise BackendUnavailable(
                "accel 'kvm' was requested but /dev/kvm is missing or not accessible",
                details={"missing": "/dev/kvm"},
            )
        return "kvm", None
    if requested != "auto":
        raise ConfigInvalid(
            f"unknown qemu accel {requested!r} (expected auto, kvm or tcg)",
            details={"accel": requested},
        )
    if identity is None:
        return "tcg", None
    key = verdict_key(identity, qemu_version, image_digest)
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
    return ("kvm" if verdict.kvm_works else "tcg"), verdict
