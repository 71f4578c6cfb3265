"""One entry point from a policy's image spec to a :class:`UserImage`.

``ensure_user_image`` pulls, builds or looks up the image an
:data:`~cleanroom.policy.image.ImageSpec` names and returns it ready to
attach; the runtime config's ``images`` section supplies the registries that
may be plain HTTP.
"""

from __future__ import annotations

from cleanroom.config import ImagesConfig
from cleanroom.images.debimage import build_debian_image
from cleanroom.images.ocipull import pull_oci_image
from cleanroom.images.progress import Progress
from cleanroom.images.usercache import CachedImage
from cleanroom.images.userimage import UserImage
from cleanroom.policy.image import DebianImage, ImageSpec

__all__ = ["ensure_cached_image", "ensure_user_image"]


def ensure_cached_image(
    spec: ImageSpec, *, images: ImagesConfig | None = None, progress: Progress | None = None
) -> CachedImage:
    """The cache entry for ``spec``, made first if needed. Raises ImageUnavailable."""
    settings = images if images is not None else ImagesConfig()
    if isinstance(spec, DebianImage):
        return build_debian_image(spec, progress=progress)
    return pull_oci_image(
        spec.ref, insecure_registries=settings.insecure_registries, progress=progress
    )


def ensure_user_image(
    spec: ImageSpec, *, images: ImagesConfig | None = None, progress: Progress | None = None
) -> UserImage:
    """The image ``spec`` names, ready to attach read-only. Raises ImageUnavailable."""
    return ensure_cached_image(spec, images=images, progress=progress).image
