"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from cleanroom.images import GuestImage, ensure_image


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The guest image for the current inputs, built once per session (cached on disk)."""
    return ensure_image()


@pytest.fixture(autouse=True)
def _image_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """Tests marked ``image`` get the built image before they start."""
    if request.node.get_closest_marker("image") is not None:
        request.getfixturevalue("guest_image")
