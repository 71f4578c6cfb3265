"""Image patterns of the runtime config's ``policy.ceiling.images``: which user images
a repository policy (or a launch's override) may name. See :func:`parse_image_pattern`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cleanroom.policy.image import (
    DebianImage,
    ImageSpec,
    InvalidImageRef,
    parse_image_ref,
    valid_suite,
)

__all__ = ["ImagePattern", "ImagePatternKind", "parse_image_pattern"]

_ZERO_DIGEST = "sha256:" + "0" * 64
_DOCKER_HUB = "docker.io"


ImagePatternKind = Literal["any", "digest", "name", "prefix", "debian"]


@dataclass(frozen=True)
class ImagePattern:
    """Images a policy may name (see :func:`parse_image_pattern`)."""

    text: str
    """The normalised pattern, as shown to operators."""
    kind: ImagePatternKind
    registry: str = ""
    repository: str = ""
    """For ``prefix``: the path prefix (empty: the whole registry)."""
    digest: str | None = None
    suite: str | None = None
    """For ``debian``: the one suite allowed (None: every suite)."""

    def matches(self, image: ImageSpec) -> bool:
        """Whether ``image`` is one this pattern admits."""
        if isinstance(image, DebianImage):
            return self.kind == "debian" and (self.suite is None or image.suite == self.suite)
        ref = image.ref
        if self.kind == "any":
            return True
        if self.kind == "digest":
            return ref.digest == self.digest
        if ref.is_local or ref.registry != self.registry:
            return False
        if self.kind == "name":
            return ref.repository == self.repository and self.digest in (None, ref.digest)
        if self.kind == "prefix":
            return not self.repository or ref.repository.startswith(self.repository + "/")
        return False


def parse_image_pattern(text: str) -> ImagePattern:
    """An image pattern; raises :class:`~cleanroom.policy.image.InvalidImageRef`.

    - ``*``: every registry or imported image (not Debian recipes);
    - ``sha256:<64 hex>``: the image with that digest, imported or pulled;
    - ``NAME`` or ``NAME@sha256:<64 hex>``: that repository (normalised as
      ``docker pull`` does: ``alpine`` is ``docker.io/library/alpine``), any
      digest or that one; tags are refused (they are not what is run);
    - ``REGISTRY/*`` or ``REGISTRY/PATH/*``: every repository under it;
    - ``debian`` or ``debian:SUITE``: Debian-recipe images (of that suite).

    The built-in image needs no pattern: it is always admitted.
    """
    text = text.strip()
    if text == "*":
        return ImagePattern("*", "any")
    if text == "debian" or text.startswith("debian:"):
        suite = text.partition(":")[2] or None
        if text.endswith(":") or (suite is not None and not valid_suite(suite)):
            raise InvalidImageRef(f"{text!r}: write debian or debian:SUITE")
        return ImagePattern(text, "debian", suite=suite)
    if text.startswith("sha256:"):
        ref = parse_image_ref(text)
        return ImagePattern(ref.digest, "digest", digest=ref.digest)
    if text.endswith("/*"):
        return _prefix_pattern(text[:-2], text)
    if "*" in text:
        raise InvalidImageRef(f"{text!r}: '*' is only allowed as a whole last path part ('/*')")
    name, at, digest = text.partition("@")
    if _has_tag(name):
        raise InvalidImageRef(f"{text!r}: a pattern names a repository, not a tag")
    ref = parse_image_ref(f"{name}@{digest if at else _ZERO_DIGEST}")
    pinned = ref.digest if at else None
    shown = f"{ref.name}@{pinned}" if pinned else ref.name
    return ImagePattern(shown, "name", ref.registry, ref.repository, pinned)


def _has_tag(name: str) -> bool:
    return name.rfind(":") > name.rfind("/")


def _prefix_pattern(prefix: str, text: str) -> ImagePattern:
    """``REGISTRY/*`` or ``[REGISTRY/]PATH/*``: no ``library/`` is added to a prefix."""
    if not prefix:
        raise InvalidImageRef(f"{text!r}: name a registry or path before '/*' (or write '*')")
    first, slash, rest = prefix.partition("/")
    if "." in first or ":" in first or first == "localhost":
        registry, path = first.lower(), rest
    else:
        registry, path = _DOCKER_HUB, prefix
    if not registry or "*" in prefix or (slash and not rest) or ":" in path:
        raise InvalidImageRef(f"{text!r} is not a valid REGISTRY[/PATH]/* pattern")
    # Validate the spelling through the reference grammar (any repository will do).
    probe = f"{registry}/{path + '/' if path else ''}x@{_ZERO_DIGEST}"
    parsed = parse_image_ref(probe)
    if parsed.registry != registry:
        raise InvalidImageRef(f"{text!r} is not a valid REGISTRY[/PATH]/* pattern")
    shown = f"{registry}/{path}/*" if path else f"{registry}/*"
    return ImagePattern(shown, "prefix", registry, path)
