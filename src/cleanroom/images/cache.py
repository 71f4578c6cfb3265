"""The content-addressed image cache: ``images_dir()/<digest>/``.

A build runs in a private ``.build-*`` directory inside the cache and is
published by renaming its output directory to ``<digest>`` after the manifest
is written, so an interrupted build never leaves anything that looks like an
image. Builders are serialised by the lock of :mod:`cleanroom.images.cachedir`
on ``images_dir()/.lock``.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.builder import build_artifacts
from cleanroom.images.cachedir import build_lock, discard, load_entries, new_staging, publish
from cleanroom.images.manifest import GuestImage, load_image
from cleanroom.images.progress import NullProgress, Progress
from cleanroom.images.recipe import BuildInputs, resolve_inputs
from cleanroom.images.tools import REQUIRED_TOOLS, require_tools, run_tool
from cleanroom.paths import images_dir

__all__ = [
    "current_image",
    "ensure_image",
    "image_digest",
    "list_images",
    "prune_images",
]

_CANDIDATES_CACHE = ".apt-candidates.json"


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
    images = load_entries(images_dir(), load_image)
    images.sort(key=lambda img: str(img.manifest.get("built_at", "")), reverse=True)
    return images


def _resolve_for_build(progress: Progress, agent_dir: Path | None) -> BuildInputs:
    try:
        return _inputs(agent_dir=agent_dir)
    except ImageUnavailable as exc:
        if "missing_packages" not in exc.details:
            raise
        progress.info(f"{exc.message}; running apt-get update")
        run_tool(["apt-get", "update", "-q"])
        return _inputs(agent_dir=agent_dir)


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
        staging_root = new_staging(root)
        try:
            out = staging_root / "image"
            out.mkdir()
            progress.info(f"building image {inputs.digest[:12]}")
            build_artifacts(inputs, out, staging_root / "work", progress)
            shutil.rmtree(staging_root / "work", ignore_errors=True)
            staging = out.rename(staging_root / inputs.digest)
            publish(staging, final)
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
            discard(image.path, "prune")
            removed.append(image.digest)
    return removed
