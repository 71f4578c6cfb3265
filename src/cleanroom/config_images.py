"""The runtime config's ``images`` section (user images: registries, overrides, caps).

::

    images:
      insecure_registries: [HOST[:PORT], ...]  # plain-HTTP registries besides loopback ones
      allow_override: true           # may a run name another image than its policy's?
      default: null                  # image ref used when a policy names none (null: built-in)
      max: {vcpus: 4, memory_mib: 4096, disk_mib: 16384}   # caps on sandbox.resources
"""

from __future__ import annotations

from dataclasses import dataclass

from cleanroom._yaml import YamlEntry, read_bool, read_sequence, read_str
from cleanroom.config_reader import SectionReader, is_null

__all__ = ["IMAGES_KEYS", "ImagesConfig", "read_images"]

IMAGES_KEYS = ("insecure_registries", "allow_override", "default", "max")
_MAX_VCPUS = 64
_MIN_MEMORY_MIB = 64
_MIN_DISK_MIB = 64


@dataclass(frozen=True)
class ImagesConfig:
    """User images: registries, overrides, the default image and resource caps."""

    insecure_registries: tuple[str, ...] = ()
    """``host[:port]`` registries that may be plain HTTP (loopback ones always may)."""
    allow_override: bool = True
    default: str | None = None
    """A digest-pinned ref (validated, normalised) used when the policy names no image."""
    max_vcpus: int = 4
    max_memory_mib: int = 4096
    max_disk_mib: int = 16384


def read_images(reader: SectionReader, section: dict[str, YamlEntry]) -> ImagesConfig:
    """Parse the ``images`` section's entries (problems go to ``reader.problems``)."""
    # The policy package is only needed when this section is read.
    from cleanroom.policy.image import InvalidImageRef, parse_image_ref  # noqa: PLC0415

    problems = reader.problems
    registries: list[str] = []
    entry = section.get("insecure_registries")
    if entry is not None and not is_null(entry.value):
        for index, item in enumerate(
            read_sequence(entry.value, "images.insecure_registries", problems) or ()
        ):
            text = read_str(item, f"images.insecure_registries[{index}]", problems)
            if text is not None:
                registries.append(text.strip().lower())
    allow_override = True
    entry = section.get("allow_override")
    if entry is not None:
        value = read_bool(entry.value, "images.allow_override", problems)
        allow_override = True if value is None else value
    default: str | None = None
    entry = section.get("default")
    if entry is not None and not is_null(entry.value):
        text = read_str(entry.value, "images.default", problems)
        if text is not None:
            try:
                default = str(parse_image_ref(text))
            except InvalidImageRef as exc:
                problems.add(entry.value.mark, "images.default", exc.message)
    caps = reader.section(section, "max", "images", ("vcpus", "memory_mib", "disk_mib"))
    return ImagesConfig(
        insecure_registries=tuple(registries),
        allow_override=allow_override,
        default=default,
        max_vcpus=reader.integer(caps, "vcpus", "images.max", 4, minimum=1, maximum=_MAX_VCPUS),
        max_memory_mib=reader.integer(
            caps, "memory_mib", "images.max", 4096, minimum=_MIN_MEMORY_MIB
        ),
        max_disk_mib=reader.integer(caps, "disk_mib", "images.max", 16384, minimum=_MIN_DISK_MIB),
    )
