"""Fixtures: a real server (uvicorn on a unix socket) over the real service.

``root``, ``repo``, ``backend`` and ``service`` come from the suite-wide ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.server import ListenAddress
from cleanroom.service import Service
from cleanroom.testing import ServerThread


@pytest.fixture
def short_tmp(root: Path) -> Path:
    """The shared short temporary directory (unix socket paths are limited to 107 bytes)."""
    return root


@pytest.fixture
def sock(short_tmp: Path) -> Path:
    return short_tmp / "run" / "cleanroom.sock"


@pytest.fixture
def server(service: Service, sock: Path) -> Iterator[ServerThread]:
    with ServerThread(service, ListenAddress(scheme="unix", path=sock)) as running:
        yield running
