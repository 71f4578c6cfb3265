"""The user image cache: ``images_dir()/user/<hex>/{rootfs.ext4,image.json,last-used}``
and ``snapshots/``, the guest snapshots of the image (made by the QEMU backend;
removed with the entry).

``<hex>`` is the image's content address (``UserImage.key`` without
``sha256:``). Entries are made in a private ``.build-*`` directory under the
cache's builder lock (the same ``flock`` mechanism as the guest image cache)
and published by one ``rename``, so an interrupted or failed pull, build or
import never leaves anything that looks like an image. ``rootfs.ext4`` is
mode 0444 and never written again; ``last-used`` only has its mtime bumped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanroom.errors import ImageUnavailable
from cleanroom.images.cachedir import build_lock, discard, load_entries, new_staging, publish
from cleanroom.images.ext4 import make_ext4
from cleanroom.images.progress import NullProgress, Progress
from cleanroom.images.userimage import ImageConfig, UserImage
from cleanroom.paths import images_dir

__all__ = [
    "CachedImage",
    "Produced",
    "check_disk_fits",
    "find_user_image",
    "list_user_images",
    "lookup_user_image",
    "obtain_user_image",
    "prune_user_images",
    "remove_user_images",
    "user_images_dir",
]

_KEY_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_META = "image.json"
_ROOTFS = "rootfs.ext4"
_USED = "last-used"
_META_LIMIT = 256 * 1024
_META_KEYS = {"format", "key", "source", "config", "size_bytes", "content_bytes", "created_at"}
_META_KEYS_ALL = {*_META_KEYS, "origin"}


def user_images_dir() -> Path:
    """Where user images are cached."""
    return images_dir() / "user"


@dataclass(frozen=True)
class CachedImage:
    """A cache entry: the image plus bookkeeping for ``image ls``/``prune``."""

    image: UserImage
    created_at: str
    last_used: float
    """Seconds since the epoch of the last lookup, pull or build."""
    content_bytes: int
    """Bytes of file content in the tree (what a disk must at least hold)."""
    origin: dict[str, str] = field(default_factory=dict, compare=False)
    """Where it came from in detail (manifest digest, packages hash, archive name)."""


@dataclass(frozen=True)
class Produced:
    """What a producer leaves in its work directory: a root tree and its description."""

    key: str
    source: str
    tree: Path
    config: ImageConfig
    origin: dict[str, str] = field(default_factory=dict)


def _hex(key: str) -> str:
    match = _KEY_RE.match(key)
    if match is None:
        raise ImageUnavailable("malformed image key", details={"key": key[:100]})
    return match.group(1)


def _load(entry: Path) -> CachedImage:
    """Parse one entry strictly; raises ImageUnavailable on any deviation."""
    try:
        with (entry / _META).open("rb") as handle:
            raw = handle.read(_META_LIMIT + 1)
        used = (entry / _USED).stat().st_mtime
        rootfs_size = (entry / _ROOTFS).stat().st_size
    except OSError as exc:
        raise ImageUnavailable(f"incomplete cache entry {entry.name[:12]}") from exc
    if len(raw) > _META_LIMIT:
        raise ImageUnavailable(f"oversized metadata in cache entry {entry.name[:12]}")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise ImageUnavailable(f"corrupt metadata in cache entry {entry.name[:12]}") from exc
    if not isinstance(meta, dict) or not _META_KEYS <= set(meta) <= _META_KEYS_ALL:
        raise ImageUnavailable(f"malformed metadata in cache entry {entry.name[:12]}")
    key, source, created = meta["key"], meta["source"], meta["created_at"]
    size, content = meta["size_bytes"], meta["content_bytes"]
    origin = meta.get("origin", {})
    if (
        meta["format"] != 1
        or not isinstance(key, str)
        or key != f"sha256:{entry.name}"
        or not isinstance(source, str)
        or not isinstance(created, str)
        or not isinstance(size, int)
        or size != rootfs_size
        or not isinstance(content, int)
        or not isinstance(origin, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in origin.items())
    ):
        raise ImageUnavailable(f"inconsistent metadata in cache entry {entry.name[:12]}")
    image = UserImage(
        key=key,
        source=source,
        rootfs=entry / _ROOTFS,
        config=ImageConfig.from_dict(meta["config"]),
        size_bytes=size,
    )
    return CachedImage(image, created, used, content, dict(origin))


def _touch(entry: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(entry / _USED)


def lookup_user_image(key: str) -> CachedImage | None:
    """The cached entry for ``key`` (marking it used), or ``None``."""
    entry = user_images_dir() / _hex(key)
    try:
        cached = _load(entry)
    except ImageUnavailable:
        return None
    _touch(entry)
    return cached


def list_user_images() -> list[CachedImage]:
    """Every complete entry, most recently used first."""
    found = load_entries(user_images_dir(), _load)
    found.sort(key=lambda c: c.last_used, reverse=True)
    return found


def obtain_user_image(
    produce: Callable[[Path, Progress], Produced],
    *,
    key: str | None = None,
    progress: Progress | None = None,
) -> CachedImage:
    """The cached image for ``key``, or one made by ``produce`` and cached.

    ``produce(work, progress)`` fills the empty directory ``work`` and says
    what it made; its ``key`` (which must equal ``key`` when that is given)
    addresses the entry. Runs under the builder lock; anything ``produce``
    leaves is removed whether it succeeds or fails.
    """
    progress = progress if progress is not None else NullProgress()
    if key is not None:
        hit = lookup_user_image(key)
        if hit is not None:
            progress.info(f"image {key[7:19]} is cached")
            return hit
    root = user_images_dir()
    root.mkdir(parents=True, exist_ok=True)
    with build_lock(root, progress):
        if key is not None:
            hit = lookup_user_image(key)
            if hit is not None:
                return hit
        staging = new_staging(root)
        try:
            work = staging / "work"
            work.mkdir()
            made = produce(work, progress)
            if key is not None and made.key != key:
                raise ImageUnavailable(
                    "the image's content does not match its digest",
                    details={"expected": key, "actual": made.key},
                )
            final = root / _hex(made.key)
            hit = lookup_user_image(made.key)
            if hit is not None:
                progress.info(f"image {made.key[7:19]} is cached")
                return hit
            out = staging / "out"
            out.mkdir()
            progress.start("ext4", "writing the read-only root filesystem")
            size = make_ext4(made.tree, out / _ROOTFS)
            rootfs_bytes = (out / _ROOTFS).stat().st_size
            progress.finish("ext4", f"{rootfs_bytes / (1 << 20):.0f} MiB")
            meta: dict[str, Any] = {
                "format": 1,
                "key": made.key,
                "source": made.source,
                "config": made.config.to_dict(),
                "size_bytes": rootfs_bytes,
                "content_bytes": size.content_bytes,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "origin": made.origin,
            }
            (out / _META).write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
            (out / _USED).touch()
            publish(out, final)
        except OSError as exc:
            raise ImageUnavailable(f"cannot write the image cache: {exc.strerror or exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _load(final)


def check_disk_fits(cached: CachedImage, disk_mib: int) -> None:
    """Raise ImageUnavailable if a ``disk_mib`` disk cannot hold the image's content."""
    if cached.content_bytes > disk_mib * (1 << 20):
        raise ImageUnavailable(
            f"the image needs {cached.content_bytes >> 20} MiB but the disk is {disk_mib} MiB",
            details={"content_bytes": cached.content_bytes, "disk_mib": disk_mib},
        )


def _matching(selector: str) -> list[CachedImage]:
    wanted = selector.removeprefix("sha256:")
    return [
        c
        for c in list_user_images()
        if c.image.key[7:].startswith(wanted) or c.image.source == selector
    ]


def find_user_image(selector: str) -> CachedImage:
    """The one entry named by digest (prefix, at least 4 hex), exact source or
    pinned ref; ImageUnavailable if none or several match."""
    matches = _matching(selector) if len(selector.removeprefix("sha256:")) >= 4 else []
    if not matches:
        matches = [c for c in list_user_images() if c.origin.get("ref") == selector]
    if len(matches) != 1:
        raise ImageUnavailable(
            f"{len(matches)} cached images match {selector!r}",
            details={"selector": selector, "hint": "see: cleanroom image ls"},
        )
    return matches[0]


def remove_user_images(
    selectors: list[str], *, progress: Progress | None = None
) -> list[CachedImage]:
    """Remove the entries named by digest (prefix, at least 4 hex) or exact source,
    and with each its guest snapshots (kept inside its entry).

    A selector matching no entry, or several, raises ImageUnavailable and removes nothing.
    """
    progress = progress if progress is not None else NullProgress()
    chosen: dict[str, CachedImage] = {}
    for selector in selectors:
        matches = _matching(selector) if len(selector.removeprefix("sha256:")) >= 4 else []
        if len(matches) != 1:
            raise ImageUnavailable(
                f"{len(matches)} cached images match {selector!r}",
                details={"selector": selector, "hint": "see: cleanroom image ls"},
            )
        chosen[matches[0].image.key] = matches[0]
    root = user_images_dir()
    with build_lock(root, progress):
        for cached in chosen.values():
            discard(cached.image.rootfs.parent, "rm")
    return list(chosen.values())


def prune_user_images(
    *,
    unused_seconds: float = 0.0,
    keep: frozenset[str] = frozenset(),
    progress: Progress | None = None,
) -> list[CachedImage]:
    """Remove entries not used for ``unused_seconds`` (0: all), except keys in ``keep``
    (each with its guest snapshots)."""
    progress = progress if progress is not None else NullProgress()
    root = user_images_dir()
    if not root.is_dir():
        return []
    cutoff = time.time() - unused_seconds
    removed: list[CachedImage] = []
    with build_lock(root, progress):
        for cached in list_user_images():
            if cached.image.key in keep or cached.last_used > cutoff:
                continue
            discard(cached.image.rootfs.parent, "rm")
            removed.append(cached)
    return removed
