"""Fixtures: a real server (uvicorn on a unix socket) over the fake service."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.server import ListenAddress
from cleanroom.server.testing import FakeService, ServerThread


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="crs-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repo(short_tmp: Path) -> Path:
    path = short_tmp / "repo"
    path.mkdir()
    (path / "cleanroom.yaml").write_text("# fake policy\n")
    return path


@pytest.fixture
def fake(short_tmp: Path) -> FakeService:
    return FakeService(short_tmp / "state")


@pytest.fixture
def sock(short_tmp: Path) -> Path:
    return short_tmp / "run" / "cleanroom.sock"


@pytest.fixture
def server(fake: FakeService, sock: Path) -> Iterator[ServerThread]:
    with ServerThread(fake, ListenAddress(scheme="unix", path=sock)) as running:
        yield running
