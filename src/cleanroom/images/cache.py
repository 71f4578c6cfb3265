"""The content-addressed image cache: ``images_dir()/<digest>/``.

A build runs in a private ``.build-*`` directory inside the cache and is
published by renaming its output directory to ``<digest>`` after the manifest
is written, so an interrupted build never leaves anything that looks like an
image. An exclusive ``flock`` on ``images_dir()/.lock`` serialises builders;
whoever takes the lock removes stale ``.build-*`` directories (their builders
are gone, since they no longer hold the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.builder import build_artifacts
from cleanroom.images.manifest import GuestImage, load_image
from cleanroom.images.progress import NullProgress, Progress
from cleanroom.images.recipe import BuildInputs, resolve_inputs
from cleanroom.images.tools import REQUIRED_TOOLS, require_tools, run_tool
from cleanroom.paths import images_dir

__all__ = [
    "build_lock",
    "current_image",
    "ensure_image",
    "image_digest",
    "list_images",
    "prune_images",
]

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_CANDIDATES_CACHE = ".apt-candidates.json"
_BUILD_PREFIX = ".build-"


def _inputs(*, agent_dir: Path | None = None) -> BuildInputs:
    require_tools(["apt-cache"])
    return resolve_inputs(agent_dir=agent_dir, cache_file=images_dir() / _CANDIDATES_CACHE)


def image_digest(*, agent_dir: Path | None = None) -> str:
    """The digest of the image the current inputs would build (cheap; no build).

    Raises ImageUnavailable if the inputs cannot be resolved here.
    """
    return _inputs(agent_dir=agent_dir).digest


def current_image(*, agent_dir: Path | None = None) -> GuestImage | None:
    """The cached image for the current inputs, or None (also if inputs cannot be resolved).

    Light check only (a valid manifest); use :func:`verify_image` for hashes.
    """
    try:
        digest = image_digest(agent_dir=agent_dir)
        return load_image(images_dir() / digest)
    except ImageUnavailable:
        return None


def list_images() -> list[GuestImage]:
    """Every complete image in the cache, newest build first."""
    root = images_dir()
    if not root.is_dir():
        return []
    images: list[GuestImage] = []
    for entry in root.iterdir():
        if not _DIGEST_RE.match(entry.name) or not entry.is_dir():
            continue
        with contextlib.suppress(ImageUnavailable):
            images.append(load_image(entry))
    images.sort(key=lambda img: str(img.manifest.get("built_at", "")), reverse=True)
    return images


@contextlib.contextmanager
def build_lock(root: Path, progress: Progress) -> Iterator[None]:
    """Hold the exclusive builder lock of the cache directory ``root`` (waits, saying so)."""
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.info("waiting for another image build to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _remove_stale(root: Path) -> None:
    for entry in root.iterdir():
        if entry.name.startswith(_BUILD_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _resolve_for_build(progress: Progress, agent_dir: Path | None) -> BuildInputs:
    try:
        return _inputs(agent_dir=agent_dir)
    except ImageUnavailable as exc:
        if "missing_packages" not in exc.details:
            raise
        progress.info(f"{exc.message}; running apt-get update")
        run_tool(["apt-get", "update", "-q"])
        return _inputs(agent_dir=agent_dir)


def _publish(staging: Path, final: Path) -> None:
    """Move ``staging`` to ``final`` atomically, replacing any existing image."""
    if final.exists():
        # rename() cannot replace a non-empty directory: move the old one aside first.
        old = final.with_name(f"{_BUILD_PREFIX}old-{final.name}-{os.getpid()}")
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(final)


def ensure_image(
    *, force: bool = False, progress: Progress | None = None, agent_dir: Path | None = None
) -> GuestImage:
    """The image for the current inputs, building it first if it is not cached (or ``force``).

    ``agent_dir`` overrides where the agent sources come from (tests).
    Raises ImageUnavailable if the image cannot be built here (the message
    names missing tools and how to provide an image by hand).
    """
    progress = progress if progress is not None else NullProgress()
    root = images_dir()
    root.mkdir(parents=True, exist_ok=True)
    inputs = _resolve_for_build(progress, agent_dir)
    final = root / inputs.digest
    if not force:
        with contextlib.suppress(ImageUnavailable):
            image = load_image(final)
            progress.info(f"image {inputs.digest[:12]} is cached")
            return image
    require_tools(list(REQUIRED_TOOLS))
    with build_lock(root, progress):
        if not force:
            # Another builder may have finished this image while we waited for the lock.
            with contextlib.suppress(ImageUnavailable):
                return load_image(final)
        _remove_stale(root)
        staging_root = Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, dir=root))
        try:
            out = staging_root / "image"
            out.mkdir()
            progress.info(f"building image {inputs.digest[:12]}")
            build_artifacts(inputs, out, staging_root / "work", progress)
            shutil.rmtree(staging_root / "work", ignore_errors=True)
            staging = out.rename(staging_root / inputs.digest)
            _publish(staging, final)
        finally:
            shutil.rmtree(staging_root, ignore_errors=True)
        return load_image(final)


def prune_images(*, keep: int = 1, progress: Progress | None = None) -> list[str]:
    """Delete cached images except the current one and the ``keep`` newest others.

    Runs under the build lock; returns the removed digests. Images already
    handed to a running VM stay usable: open files survive their deletion.
    """
    progress = progress if progress is not None else NullProgress()
    root = images_dir()
    if not root.is_dir():
        return []
    current = current_image()
    removed: list[str] = []
    with build_lock(root, progress):
        others = [i for i in list_images() if current is None or i.digest != current.digest]
        for image in others[max(keep, 0) :]:
            # Rename first so a half-deleted directory never looks like an image.
            doomed = root / f"{_BUILD_PREFIX}prune-{image.digest}"
            image.path.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(image.digest)
    return removed
