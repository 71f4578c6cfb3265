"""The cache layer: builders are serialised by the lock and re-check after waiting.

The build itself is replaced by a double that writes a self-consistent image
(this tests the cache layer only; real builds are tested in test_images_build).
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from apt_candidates import seed_candidates

from cleanroom.images import (
    RichProgress,
    current_image,
    ensure_image,
    image_digest,
    list_images,
    prune_images,
)
from cleanroom.images import cache as cache_module
from cleanroom.images.manifest import ARTIFACTS, MANIFEST_SCHEMA, file_sha256, write_manifest
from cleanroom.images.recipe import BuildInputs
from cleanroom.paths import images_dir

pytestmark = pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs apt-cache")


class Recorder:
    """A Progress that records info messages and signals when one arrives."""

    def __init__(self) -> None:
        self.infos: list[str] = []
        self.waiting = threading.Event()

    def start(self, step: str, description: str) -> None:
        pass

    def advance(self, step: str, completed: int, total: int | None = None, unit: str = "") -> None:
        pass

    def finish(self, step: str, detail: str = "") -> None:
        pass

    def info(self, message: str) -> None:
        self.infos.append(message)
        if "waiting" in message:
            self.waiting.set()


def fake_build(inputs: BuildInputs, out: Path, work: Path, progress: Any) -> dict[str, Any]:
    artifacts = {}
    for role, name in ARTIFACTS.items():
        (out / name).write_bytes(role.encode() * 10)
        artifacts[role] = {
            "file": name,
            "sha256": file_sha256(out / name),
            "size": (out / name).stat().st_size,
        }
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "digest": inputs.digest,
        "artifacts": artifacts,
        "packages": [],
        "kernel_version": "fake",
        "agent_version": inputs.agent_version,
        "built_at": "2026-01-01T00:00:00+00:00",
        "build_seconds": 0.0,
        "builder_version": "0.1.0",
        "recipe_version": inputs.recipe_version,
        "inputs": inputs.describe(),
    }
    write_manifest(out, manifest)
    return manifest


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, apt_candidates: bytes) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seed_candidates(apt_candidates)
    return images_dir()


def test_waiting_builder_takes_the_image_the_lock_holder_published(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    builds: list[str] = []

    def counting_build(inputs: BuildInputs, out: Path, work: Path, progress: Any) -> Any:
        builds.append(inputs.digest)
        return fake_build(inputs, out, work, progress)

    monkeypatch.setattr(cache_module, "build_artifacts", counting_build)
    private_cache.mkdir(parents=True, exist_ok=True)
    digest = image_digest()
    recorder = Recorder()
    result: list[Any] = []
    fd = os.open(private_cache / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        worker = threading.Thread(
            target=lambda: result.append(ensure_image(progress=recorder)), daemon=True
        )
        worker.start()
        assert recorder.waiting.wait(60), recorder.infos
        # Meanwhile "another builder" (this test) publishes the image under the lock.
        staging = tmp_path / "other"
        staging.mkdir()
        inputs = cache_module._inputs()
        fake_build(inputs, staging, tmp_path, recorder)
        staging.rename(private_cache / digest)
        # A stale staging directory from a crashed builder.
        (private_cache / ".build-crashed").mkdir()
    finally:
        os.close(fd)
    worker.join(60)
    assert not worker.is_alive()
    assert builds == []  # the waiter re-checked after the lock and did not rebuild
    assert result[0].digest == digest

    # A forced rebuild replaces the image and removes stale staging directories.
    image = ensure_image(force=True)
    assert builds == [digest]
    assert image.digest == digest
    assert not [p for p in private_cache.iterdir() if p.name.startswith(".build-")]
    assert [i.digest for i in list_images()] == [digest]
    current = current_image()
    assert current is not None
    assert current.digest == digest


def test_rich_progress_renders_steps() -> None:
    out = io.StringIO()
    with RichProgress(out) as progress:
        progress.start("download", "fetch packages")
        progress.advance("download", 5, 10, "bytes")
        progress.finish("download", "38 MiB")
        progress.info("image abc is cached")
    text = out.getvalue()
    assert "download" in text
    assert "image abc is cached" in text


def test_prune_keeps_current_and_newest(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "build_artifacts", fake_build)
    current = ensure_image()
    # Three older images with distinct build times.
    for n, stamp in enumerate(("2025-01-01", "2025-02-01", "2025-03-01")):
        digest = f"{n}" * 64
        inputs = cache_module._inputs()
        staging = private_cache / f"tmp{n}"
        staging.mkdir()
        manifest = fake_build(inputs, staging, staging, None)
        manifest["digest"] = digest
        manifest["built_at"] = f"{stamp}T00:00:00+00:00"
        write_manifest(staging, manifest)
        staging.rename(private_cache / digest)
    assert len(list_images()) == 4
    removed = prune_images(keep=1)
    assert sorted(removed) == ["0" * 64, "1" * 64]
    assert {i.digest for i in list_images()} == {current.digest, "2" * 64}
    assert prune_images(keep=0) == ["2" * 64]
    assert [i.digest for i in list_images()] == [current.digest]
    assert not [p for p in private_cache.iterdir() if p.name.startswith(".build-")]
