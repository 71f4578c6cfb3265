"""What a policy says about the guest: which user image, and how big a machine.

Values only (no I/O): :class:`ImageRef` (an OCI/Docker reference pinned by
digest, or the bare digest of an imported image), the two image sources
:class:`OciImage` and :class:`DebianImage`, and :class:`Resources`.

Reference grammar (docker's): ``[registry/]path[:tag]@sha256:<64 hex>``. The
first component is a registry when it contains ``.`` or ``:`` or is
``localhost``; otherwise the registry is ``docker.io`` and a one-component
path gets ``library/`` in front, as ``docker pull`` does. A bare
``sha256:<64 hex>`` names an image already in the local cache (what
``cleanroom image import`` prints); it is never pulled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cleanroom.errors import PolicyInvalid

__all__ = [
    "MAX_DISK_MIB",
    "MAX_MEMORY_MIB",
    "MAX_VCPUS",
    "DebianImage",
    "ImageRef",
    "ImageSpec",
    "InvalidImageRef",
    "OciImage",
    "Resources",
    "parse_image_ref",
    "require_image_ref",
    "valid_package_name",
    "valid_suite",
]

MAX_VCPUS = 64
MAX_MEMORY_MIB = 1 << 20
MAX_DISK_MIB = 1 << 22
_MAX_REF = 512

_DIGEST = r"sha256:[0-9a-f]{64}"
_DIGEST_RE = re.compile(rf"^{_DIGEST}$")
# docker/distribution's reference grammar, restricted to sha256 digests.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_RE = re.compile(
    r"^(?:localhost|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,99}$")
_SUITE_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,63}$")
_DOCKER_HUB = "docker.io"


class InvalidImageRef(ValueError):
    """A reference that is malformed or not pinned by digest; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ImageRef:
    """A digest-pinned image reference, normalised.

    ``registry`` and ``repository`` are empty for a local (imported) image.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str
    """``sha256:<64 hex>``: of the manifest or index the registry serves."""

    @property
    def is_local(self) -> bool:
        """Whether this names an imported image by digest alone (never pulled)."""
        return not self.repository

    @property
    def name(self) -> str:
        """``registry/repository`` (empty for a local image)."""
        return f"{self.registry}/{self.repository}" if self.repository else ""

    def pull_spec(self) -> str:
        """``registry/repository@digest``: what is fetched (the tag is informational)."""
        return f"{self.name}@{self.digest}"

    def __str__(self) -> str:
        if self.is_local:
            return self.digest
        tag = f":{self.tag}" if self.tag else ""
        return f"{self.name}{tag}@{self.digest}"


def parse_image_ref(text: str) -> ImageRef:
    """Parse and normalise a reference; raises :class:`InvalidImageRef`."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidImageRef("an image reference must be a non-empty string")
    text = text.strip()
    if len(text) > _MAX_REF:
        raise InvalidImageRef(f"an image reference is at most {_MAX_REF} characters")
    if _DIGEST_RE.match(text):
        return ImageRef("", "", None, text)
    name, at, digest = text.partition("@")
    if not at:
        raise InvalidImageRef(
            f"{text!r} is not pinned by digest: write NAME@sha256:<64 hex> "
            "(a tag alone is not reproducible; `skopeo inspect` shows the digest)"
        )
    if not _DIGEST_RE.match(digest):
        raise InvalidImageRef(f"{digest!r} is not a digest (expected sha256:<64 lowercase hex>)")
    tag: str | None = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidImageRef(f"{tag!r} is not a valid tag")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
        if not _DOMAIN_RE.match(registry):
            raise InvalidImageRef(f"{registry!r} is not a valid registry host")
        registry = registry.lower()
    else:
        registry, path = _DOCKER_HUB, name
        if "/" not in path:
            path = f"library/{path}"
    if not _PATH_RE.match(path):
        raise InvalidImageRef(
            f"{path!r} is not a valid repository name (lowercase letters, digits, . _ - and /)"
        )
    return ImageRef(registry, path, tag, digest)


def require_image_ref(text: str, what: str) -> ImageRef:
    """:func:`parse_image_ref` for a reference given outside a policy file: a malformed
    one is ``policy_invalid`` (``what`` names where it came from; the details carry it)."""
    try:
        return parse_image_ref(text)
    except InvalidImageRef as exc:
        raise PolicyInvalid(f"invalid {what}: {exc.message}", details={"ref": text[:600]}) from exc


def valid_package_name(name: str) -> bool:
    """Whether ``name`` is a Debian binary package name."""
    return bool(_PACKAGE_RE.match(name))


def valid_suite(name: str) -> bool:
    """Whether ``name`` looks like a Debian suite or codename (``bookworm``, ``stable``)."""
    return bool(_SUITE_RE.match(name))


@dataclass(frozen=True)
class OciImage:
    """An image from an OCI/Docker registry (or imported), pinned by digest."""

    ref: ImageRef

    def to_dict(self) -> dict[str, Any]:
        """The canonical form (policy syntax)."""
        return {"ref": str(self.ref)}


@dataclass(frozen=True)
class DebianImage:
    """A Debian root filesystem with ``packages`` (sorted, unique) installed.

    ``suite`` ``None`` means the host's own release.
    """

    suite: str | None
    packages: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The canonical form (policy syntax)."""
        return {"debian": {"suite": self.suite, "packages": list(self.packages)}}


ImageSpec = OciImage | DebianImage
"""Where a run's root filesystem comes from."""


@dataclass(frozen=True)
class Resources:
    """Requested machine size; ``None`` leaves the runtime config's default."""

    vcpus: int | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None

    def to_dict(self) -> dict[str, int]:
        """The canonical form: only the values that are set."""
        values = {"vcpus": self.vcpus, "memory_mib": self.memory_mib, "disk_mib": self.disk_mib}
        return {key: value for key, value in values.items() if value is not None}

    @property
    def is_default(self) -> bool:
        """Whether nothing is requested."""
        return not self.to_dict()
