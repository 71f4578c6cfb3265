"""Fixtures shared by every test package."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.images import GuestImage, ensure_image
from cleanroom.server import ListenAddress
from cleanroom.server.testing import FakeService, ServerThread


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The guest image for the current inputs, built once per session (cached on disk)."""
    return ensure_image()


@pytest.fixture(autouse=True)
def _image_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """Tests marked ``image`` get the built image before they start."""
    if request.node.get_closest_marker("image") is not None:
        request.getfixturevalue("guest_image")


# A real server on a real unix socket over the fake service (client and CLI tests).


@pytest.fixture
def root() -> Iterator[Path]:
    """A short temporary directory (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="crt-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repo(root: Path) -> Path:
    """A repository whose policy the fake service accepts."""
    path = root / "repo"
    path.mkdir()
    (path / "cleanroom.yaml").write_text("\n")
    return path


@pytest.fixture
def fake(root: Path) -> FakeService:
    return FakeService(root / "state")


@pytest.fixture
def host(fake: FakeService, root: Path) -> Iterator[str]:
    """``unix://`` address of a server thread serving ``fake``."""
    sock = root / "run" / "s.sock"
    with ServerThread(fake, ListenAddress(scheme="unix", path=sock)):
        yield f"unix://{sock}"
