"""What a context's guests are: the user image and the machine size, decided at launch.

:func:`resolve_sandbox` turns a compiled policy (``sandbox.image``,
``sandbox.resources``), a launch's image override and the runtime config
(``images``) into a :class:`Sandbox`: the image is pulled or built here if the
cache lacks it, so a bad image fails the launch (``image_unavailable``, or
``policy_invalid`` for a malformed ref, ``policy_conflict`` for a forbidden
override or a request over ``images.max``) rather than a run.
"""

from __future__ import annotations

from dataclasses import dataclass

from cleanroom.backends.workspace_disk import DEFAULT_WORKSPACE_DISK_BYTES
from cleanroom.config import RuntimeConfig
from cleanroom.images import (
    CachedImage,
    Progress,
    UserImage,
    check_disk_fits,
    ensure_cached_image,
)
from cleanroom.models import SandboxImage, SandboxResources
from cleanroom.policy import CompiledPolicy
from cleanroom.policy.image import ImageSpec
from cleanroom.policy.sandbox import check_resources, select_image

__all__ = ["DEFAULT_DISK_MIB", "Sandbox", "resolve_sandbox", "sandbox_image_spec"]

DEFAULT_DISK_MIB = DEFAULT_WORKSPACE_DISK_BYTES >> 20
"""Each writable disk's size when the policy asks for none (sparse on the host)."""


@dataclass(frozen=True)
class Sandbox:
    """A context's guest: image and size. ``None`` sizes mean the backend's default."""

    image: UserImage | None
    """None: the built-in image."""
    vcpus: int | None
    memory_mib: int | None
    disk_mib: int | None
    machine: SandboxResources
    """The size with the defaults filled in, as reported to clients and in records."""

    @property
    def image_info(self) -> SandboxImage | None:
        """The image as reported to clients."""
        if self.image is None:
            return None
        return SandboxImage(key=self.image.key, source=self.image.source)


def sandbox_image_spec(
    policy: CompiledPolicy, config: RuntimeConfig, override: str | None
) -> ImageSpec | None:
    """The image a context uses (None: built-in): the override, the policy's, the
    runtime default. Raises ``policy_invalid`` / ``policy_conflict``."""
    return select_image(
        policy.image,
        override=override,
        allow_override=config.images.allow_override,
        default=config.images.default,
    )


def resolve_sandbox(
    policy: CompiledPolicy,
    config: RuntimeConfig,
    backend: str,
    *,
    override: str | None = None,
    progress: Progress | None = None,
) -> Sandbox:
    """Decide and prepare a context's guest (blocking: may pull or build an image).

    Order matters for the caller's error: the cheap checks (override, ref,
    resource caps) come before any pull or build.
    """
    spec = sandbox_image_spec(policy, config, override)
    wanted = policy.resources
    caps = config.images
    check_resources(
        wanted,
        max_vcpus=caps.max_vcpus,
        max_memory_mib=caps.max_memory_mib,
        max_disk_mib=caps.max_disk_mib,
    )
    disk_mib = wanted.disk_mib if wanted.disk_mib is not None else DEFAULT_DISK_MIB
    cached: CachedImage | None = None
    if spec is not None:
        cached = ensure_cached_image(spec, images=caps, progress=progress)
        check_disk_fits(cached, disk_mib)
    settings = config.backends[backend]
    vcpus = wanted.vcpus if wanted.vcpus is not None else _setting(settings, "vcpus")
    memory = wanted.memory_mib
    if memory is None:
        memory = _setting(settings, "memory_mib")
    return Sandbox(
        image=None if cached is None else cached.image,
        vcpus=wanted.vcpus,
        memory_mib=wanted.memory_mib,
        disk_mib=wanted.disk_mib,
        machine=SandboxResources(vcpus=vcpus, memory_mib=memory, disk_mib=disk_mib),
    )


def _setting(settings: object, name: str) -> int | None:
    """A backend section's integer setting (``vcpus``, ``memory_mib``), if it has one."""
    value = getattr(settings, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
