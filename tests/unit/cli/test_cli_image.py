"""CLI tests of ``cleanroom image build|ls|verify|warm``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apt_candidates import seed_candidates

from cleanroom.cli.testing import invoke
from cleanroom.images import GuestImage, ensure_image
from cleanroom.images.manifest import ARTIFACTS, MANIFEST_SCHEMA, file_sha256, write_manifest
from cleanroom.paths import images_dir


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, apt_candidates: bytes) -> Path:
    """A private image cache holding one synthetic (but self-consistent) image."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    directory = images_dir() / ("c" * 64)
    directory.mkdir(parents=True)
    seed_candidates(apt_candidates)
    artifacts = {}
    for role, name in ARTIFACTS.items():
        path = directory / name
        path.write_bytes(role.encode() * 1000)
        artifacts[role] = {"file": name, "sha256": file_sha256(path), "size": path.stat().st_size}
    write_manifest(
        directory,
        {
            "schema": MANIFEST_SCHEMA,
            "digest": directory.name,
            "artifacts": artifacts,
            "packages": [],
            "kernel_version": "6.1.0-test",
            "agent_version": "0.0.1",
            "built_at": "2026-01-01T00:00:00+00:00",
            "build_seconds": 1.0,
            "builder_version": "0.1.0",
            "recipe_version": 1,
            "inputs": {},
        },
    )
    return directory


@pytest.fixture(scope="module")
def built_image() -> GuestImage:
    """The real image for the current inputs, from the user's cache (built once if missing)."""
    return ensure_image()


def last_json(output: str) -> dict[str, object]:
    value = json.loads(output.strip().splitlines()[-1])
    assert isinstance(value, dict)
    return value


def test_ls_json_lists_cached_images(private_cache: Path) -> None:
    result = invoke(["image", "ls", "--json"])
    assert result.exit_code == 0, result.output
    body = last_json(result.stdout)
    images = body["images"]
    assert isinstance(images, list)
    assert [i["digest"] for i in images] == [private_cache.name]
    assert images[0]["kernel_version"] == "6.1.0-test"
    assert body["current"] is None  # the synthetic image is not the current inputs' image


def test_ls_text(private_cache: Path) -> None:
    result = invoke(["image", "ls"])
    assert result.exit_code == 0, result.output
    assert private_cache.name[:12] in result.stdout
    assert "6.1.0-test" in result.stdout


def test_verify_by_digest_ok_then_corrupt(private_cache: Path) -> None:
    result = invoke(["image", "verify", "ccc", "--json"])
    assert result.exit_code == 0, result.output
    assert last_json(result.stdout)["verified"] is True
    rootfs = private_cache / "rootfs.ext4"
    data = bytearray(rootfs.read_bytes())
    data[0] ^= 1
    rootfs.write_bytes(bytes(data))
    result = invoke(["image", "verify", "ccc", "--json"])
    assert result.exit_code == 69
    error = last_json(result.stdout)["error"]
    assert isinstance(error, dict)
    assert error["code"] == "image_unavailable"
    assert "rootfs.ext4" in error["message"]


def test_verify_unknown_digest_fails(private_cache: Path) -> None:
    result = invoke(["image", "verify", "0123"])
    assert result.exit_code == 69
    assert "image_unavailable" in result.stderr


def test_build_without_tools_names_them(
    private_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = invoke(["image", "build", "--json"])
    assert result.exit_code == 69
    error = last_json(result.stdout)["error"]
    assert isinstance(error, dict)
    assert error["code"] == "image_unavailable"
    assert "apt-cache" in error["message"]
    details = error["details"]
    assert isinstance(details, dict)
    assert "backends.qemu.rootfs" in details["hint"]


@pytest.mark.image
@pytest.mark.image
def test_build_json_is_a_cache_hit_for_the_session_image(built_image: GuestImage) -> None:
    result = invoke(["image", "build", "--json"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert {"event": "info", "message": f"image {built_image.digest[:12]} is cached"} in events
    final = events[-1]
    assert final["event"] == "image"
    assert final["image"]["digest"] == built_image.digest
    verify = invoke(["image", "verify"])
    assert verify.exit_code == 0, verify.output
    assert "verified" in verify.stdout


def test_prune_json_removes_non_current_images(private_cache: Path) -> None:
    result = invoke(["image", "prune", "--keep", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert last_json(result.stdout) == {"removed": []}
    assert private_cache.is_dir()
    result = invoke(["image", "prune", "--keep", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert last_json(result.stdout) == {"removed": [private_cache.name]}
    assert not private_cache.exists()


def test_warm_of_an_uncached_user_image_is_image_unavailable() -> None:
    # A REF names a cached user image; one that is not cached is refused before
    # any backend is prepared.
    result = invoke(["image", "warm", "docker.io/library/alpine:3"])
    assert result.exit_code == 69
    assert "image_unavailable" in result.stderr
    assert "0 cached images match" in result.stderr
