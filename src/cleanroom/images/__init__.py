"""The guest image: build, cache and verify the kernel, initramfs and rootfs.

``ensure_image()`` returns the image for the current inputs (Debian package
candidates, the agent's sources, the recipe), building it on first use into
the content-addressed cache ``cleanroom.paths.images_dir()/<digest>/``.

User images (what a run's commands see as ``/``) live beside it in
``images_dir()/user/<digest>/``: ``ensure_user_image(spec)`` pulls a
digest-pinned OCI image (:func:`pull_oci_image`), builds a Debian package list
(:func:`build_debian_image`) or finds an imported one (:func:`import_image`),
and returns a :class:`UserImage` whose read-only ext4 base is never written.
"""

from __future__ import annotations

from cleanroom.images.cache import (
    current_image,
    ensure_image,
    image_digest,
    list_images,
    prune_images,
)
from cleanroom.images.debimage import build_debian_image
from cleanroom.images.importer import import_image
from cleanroom.images.manifest import GuestImage, image_from_paths, verify_image
from cleanroom.images.ocipull import pull_oci_image
from cleanroom.images.progress import (
    JsonProgress,
    NullProgress,
    PlainProgress,
    Progress,
    RichProgress,
)
from cleanroom.images.usercache import (
    CachedImage,
    check_disk_fits,
    find_user_image,
    list_user_images,
    lookup_user_image,
    prune_user_images,
    remove_user_images,
)
from cleanroom.images.userimage import ImageConfig, UserImage
from cleanroom.images.userimages import ensure_cached_image, ensure_user_image

__all__ = [
    "CachedImage",
    "GuestImage",
    "ImageConfig",
    "JsonProgress",
    "NullProgress",
    "PlainProgress",
    "Progress",
    "RichProgress",
    "UserImage",
    "build_debian_image",
    "check_disk_fits",
    "current_image",
    "ensure_cached_image",
    "ensure_image",
    "ensure_user_image",
    "find_user_image",
    "image_digest",
    "image_from_paths",
    "import_image",
    "list_images",
    "list_user_images",
    "lookup_user_image",
    "prune_images",
    "prune_user_images",
    "pull_oci_image",
    "remove_user_images",
    "verify_image",
]
