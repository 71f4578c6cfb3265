"""Fixtures shared by every test package."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from apt_candidates import apt_candidates  # noqa: F401 - fixtures offered to every test
from shared_server import module_server  # noqa: F401

from cleanroom.images import GuestImage, ensure_image
from cleanroom.server import ListenAddress
from cleanroom.service import Service
from cleanroom.testing import AgentProcessBackend, ServerThread, agent_service

# No shared host state: this test run gets its own namespace prefix (never the
# product's ``crn-``, so a live server's reconcile leaves it alone and this run's
# reconcile touches only what it made), and its own owner-record and staging
# directories. Set when this conftest is imported (before the other conftests and
# every test module); test servers started as processes inherit them.
RUN_TAG = secrets.token_hex(3)
_TMP = Path(tempfile.gettempdir())
_SHM = Path("/dev/shm")  # the product's default staging place (tmpfs)
_OWN = f"{os.getpid()}-{RUN_TAG}"
_PRIVATE = _TMP / f"cleanroom-tests-{_OWN}"
_STAGING = _SHM / f"cleanroom-tests-{_OWN}"  # private: mode 0700


def _remove_private_dirs() -> None:
    shutil.rmtree(_PRIVATE, ignore_errors=True)
    shutil.rmtree(_STAGING, ignore_errors=True)


def _sweep_dead_runs() -> None:
    """Remove the private directories of earlier test runs whose process is gone
    (killed runs cannot clean up after themselves)."""
    for parent in (_TMP, _SHM):
        for path in parent.glob("cleanroom-tests-*-*"):
            pid = path.name.removeprefix("cleanroom-tests-").split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(path, ignore_errors=True)


_sweep_dead_runs()
_PRIVATE.mkdir(mode=0o700)
_STAGING.mkdir(mode=0o700)
atexit.register(_remove_private_dirs)  # also when pytest stops before configuring
os.environ.update(
    CLEANROOM_TEST_TAG=RUN_TAG,
    CLEANROOM_NETNS_PREFIX=f"crt{RUN_TAG}-",
    CLEANROOM_NETNS_OWNER_DIR=str(_PRIVATE / "netns-owners"),
    CLEANROOM_STAGING_DIR=str(_STAGING),
)


def pytest_unconfigure(config: pytest.Config) -> None:
    _remove_private_dirs()


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
