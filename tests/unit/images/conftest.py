"""The images test fixtures (defined in tests/support/images_fixtures.py, shared by the
unit and integration tests)."""

from images_fixtures import built_image, image_cache, oci_images, read_newc

__all__ = ["built_image", "image_cache", "oci_images", "read_newc"]
