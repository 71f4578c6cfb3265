"""Deciding a run's image and machine size from its policy, the request and the runtime config.

Pure functions (no I/O), for the service to call when it launches a context:

- :func:`select_image`: the request's override (if the runtime config allows
  overrides), else the policy's image, else the runtime config's default,
  else ``None`` (the built-in image);
- :func:`check_resources`: the policy's resources against the runtime
  config's maxima; a request over a maximum is ``policy_conflict`` naming the limit.
"""

from __future__ import annotations

from cleanroom.errors import PolicyConflict
from cleanroom.policy.image import ImageSpec, OciImage, Resources, require_image_ref

__all__ = ["check_resources", "select_image"]


def select_image(
    policy_image: ImageSpec | None,
    *,
    override: str | None = None,
    allow_override: bool = True,
    default: str | None = None,
) -> ImageSpec | None:
    """The image a run uses; ``None`` means the built-in image.

    ``override`` is a ref from ``--image``/``options.image`` (malformed:
    ``policy_invalid``; given while ``allow_override`` is false: ``policy_conflict``).
    ``default`` is the runtime config's ``images.default`` (already validated).
    """
    if override is not None:
        if not allow_override:
            raise PolicyConflict(
                "the runtime config forbids overriding the policy's image",
                details={"limit": "images.allow_override", "override": override[:600]},
            )
        return OciImage(require_image_ref(override, "image override"))
    if policy_image is not None:
        return policy_image
    if default is not None:
        return OciImage(require_image_ref(default, "images.default"))
    return None


def check_resources(
    resources: Resources, *, max_vcpus: int, max_memory_mib: int, max_disk_mib: int
) -> None:
    """Raise ``policy_conflict`` naming the first maximum that ``resources`` exceeds."""
    for name, requested, maximum in (
        ("vcpus", resources.vcpus, max_vcpus),
        ("memory_mib", resources.memory_mib, max_memory_mib),
        ("disk_mib", resources.disk_mib, max_disk_mib),
    ):
        if requested is not None and requested > maximum:
            raise PolicyConflict(
                f"sandbox.resources.{name} {requested} is over the runtime config's "
                f"maximum {maximum} (images.max.{name})",
                details={
                    "limit": f"images.max.{name}",
                    "requested": requested,
                    "maximum": maximum,
                },
            )
