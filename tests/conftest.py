"""Fixtures shared by every test package."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.images import GuestImage, ensure_image
from cleanroom.server import ListenAddress
from cleanroom.service import Service
from cleanroom.testing import AgentProcessBackend, ServerThread, agent_service


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The guest image for the current inputs, built once per session (cached on disk)."""
    return ensure_image()


@pytest.fixture(autouse=True)
def _private_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test gets its own ``$XDG_STATE_HOME``: a service's start repairs, prunes
    and clears what it finds there, which must never be another test's (or a real
    server's) runs."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(autouse=True)
def _image_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """Tests marked ``image`` get the built image before they start."""
    if request.node.get_closest_marker("image") is not None:
        request.getfixturevalue("guest_image")


# A real server on a real unix socket over the real service, whose guests are
# agent processes (client, server and CLI tests).


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
    """A repository with a policy that allows no egress (what the test service can run)."""
    path = root / "repo"
    path.mkdir()
    (path / "cleanroom.yaml").write_text("version: 1\n")
    return path


@pytest.fixture
def state(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The state directory (``$XDG_STATE_HOME``) of the service under test."""
    path = root / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(path))
    return path


@pytest.fixture
def backend() -> AgentProcessBackend:
    """The service's ``qemu`` backend: guests are agent processes."""
    return AgentProcessBackend()


@pytest.fixture
def service(backend: AgentProcessBackend, state: Path) -> Service:
    """The real service over ``backend`` (the server thread starts and closes it)."""
    return agent_service(backend)


@pytest.fixture
def host(service: Service, root: Path) -> Iterator[str]:
    """``unix://`` address of a server thread serving ``service``."""
    sock = root / "run" / "s.sock"
    with ServerThread(service, ListenAddress(scheme="unix", path=sock)):
        yield f"unix://{sock}"
