"""Choosing QEMU's accelerator: KVM only where a real canary guest boots under it.

Opening /dev/kvm proves nothing (a paravirtual KVM can accept the ioctls and
then fail to emulate the guest kernel's first ``xrstor``), so ``auto`` boots the
configured image under KVM once and waits for its agent. The verdict is cached
(:mod:`cleanroom.backends.verdicts`) keyed by host KVM identity (kernel
release + /dev/kvm device), QEMU version and image digest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from cleanroom.backends.hostinfo import host_kvm_identity
from cleanroom.backends.verdicts import AccelVerdict, Canary, VerdictCache, cached_verdict
from cleanroom.errors import BackendUnavailable, ConfigInvalid

__all__ = [
    "AccelVerdict",
    "Canary",
    "VerdictCache",
    "resolve_accel",
    "verdict_key",
]


def verdict_key(kvm_identity: str, qemu_version: str, image_digest: str) -> str:
    """The cache key: a verdict is only valid for this host KVM, QEMU and image."""
    return f"{kvm_identity}|qemu:{qemu_version}|image:{image_digest}"


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
    verdict = await cached_verdict(cache, verdict_key(identity, qemu_version, image_digest), canary)
    return ("kvm" if verdict.kvm_works else "tcg"), verdict
