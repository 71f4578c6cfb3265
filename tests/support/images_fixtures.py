"""Shared fixtures for the image tests: one real image per session, and a newc reader."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ocitools import Registry, build_busybox_image, make_index, run

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


# A real registry on 127.0.0.1 holding images the tests build themselves.


@dataclass(frozen=True)
class PushedImages:
    """The session's registry and what was pushed to it (name -> pinned ref text)."""

    registry: Registry
    layout: Path
    refs: dict[str, str]


@pytest.fixture(scope="session")
def oci_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PushedImages]:
    """A docker-registry with: ``bb`` (busybox, whiteout, opaque dir, links, owners, xattr),
    ``v2`` (the same as Docker schema 2), ``multi`` (an amd64+arm64 index), ``armonly``
    (an arm64-only index), ``corrupt`` (its manifest blob altered in the registry's store)."""
    for tool in ("docker-registry", "skopeo", "umoci", "debugfs"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (run scripts/setup)")
    base = tmp_path_factory.mktemp("oci")
    registry = Registry(base / "registry")
    try:
        layout = base / "layout"
        build_busybox_image(layout, base, "bb")
        build_busybox_image(layout, base, "arm", marker="arm64")
        run(
            "umoci", "config", "--no-history", "--image", f"{layout}:arm", "--architecture", "arm64"
        )
        build_busybox_image(layout, base, "corrupt", marker="corrupt")
        make_index(layout, "multi", {"bb": "amd64", "arm": "arm64"})
        make_index(layout, "armonly", {"arm": "arm64"})
        refs = {
            "bb": registry.push(layout, "bb", "test/bb"),
            "v2": registry.push(layout, "bb", "test/v2", fmt="v2s2"),
            "multi": registry.push(layout, "multi", "test/multi"),
            "armonly": registry.push(layout, "armonly", "test/armonly"),
            "corrupt": registry.push(layout, "corrupt", "test/corrupt"),
        }
        named = {name: f"{registry.host}/test/{name}@{digest}" for name, digest in refs.items()}
        yield PushedImages(registry, layout, named)
    finally:
        registry.stop()


@pytest.fixture
def image_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty image cache (``XDG_CACHE_HOME`` under ``tmp_path``)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "cache" / "cleanroom" / "images" / "user"
