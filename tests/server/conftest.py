"""Fixtures: a real server (uvicorn on a unix socket) over the fake service.

``root``, ``repo`` and ``fake`` come from the suite-wide ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.server import ListenAddress
from cleanroom.server.testing import FakeService, ServerThread


@pytest.fixture
def short_tmp(root: Path) -> Path:
    """The shared short temporary directory (unix socket paths are limited to 107 bytes)."""
    return root


@pytest.fixture
def sock(short_tmp: Path) -> Path:
    return short_tmp / "run" / "cleanroom.sock"


@pytest.fixture
def server(fake: FakeService, sock: Path) -> Iterator[ServerThread]:
    with ServerThread(fake, ListenAddress(scheme="unix", path=sock)) as running:
        yield running
