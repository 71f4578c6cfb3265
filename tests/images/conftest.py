"""Shared fixtures for the image tests: one real image per session, and a newc reader."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cleanroom.images import GuestImage, ensure_image

NewcReader = Callable[[bytes], dict[str, tuple[int, bytes]]]


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """Parse a newc archive into name -> (mode, data), independently of the writer."""
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        content = data[body : body + size]
        pos = body + size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, content)


@pytest.fixture(scope="session")
def read_newc() -> NewcReader:
    """A newc archive parser (name -> (mode, data))."""
    return _read_newc


@pytest.fixture(scope="session")
def built_image() -> GuestImage:
    """The real image for the current inputs, from the user's cache (built once if missing)."""
    return ensure_image()
