"""``cleanroom image pull|import|rm``: user images in the local cache (no server needed).

``pull REF`` fetches a digest-pinned OCI/Docker image (a cache hit needs no
network); ``import FILE`` reads a ``docker save`` archive, an OCI archive or
layout, or a root filesystem tarball, and prints the ``ref`` to write in a
policy; ``prepare [DIR]`` pulls or builds (Debian package lists) the image
DIR's policy names; ``rm SELECTOR...`` removes entries by digest prefix or source. Each
takes ``--json`` (progress events and the result as JSON lines on stdout).
"""

# The image code (and rich, for the progress bar) load only when a command runs.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cleanroom.cli.options import Subcommands, add_command, add_json
from cleanroom.cli.output import print_json

if TYPE_CHECKING:
    from cleanroom.images import CachedImage, Progress

__all__ = ["print_user_images", "register_user_commands", "user_image_to_dict"]

ProgressFactory = Callable[[bool, contextlib.ExitStack], "Progress"]
_JSON_HELP = "Print JSON lines instead of text."


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def policy_ref(cached: CachedImage) -> str:
    """What to write as ``sandbox.image.ref``: the pinned ref, or the bare key of an import."""
    if cached.origin.get("kind") == "oci" and "ref" in cached.origin:
        return cached.origin["ref"]
    if cached.origin.get("kind") == "debian":
        return ""
    return cached.image.key


def user_image_to_dict(cached: CachedImage) -> dict[str, Any]:
    """The JSON form of a user image, as the CLI prints it."""
    image = cached.image
    return {
        "key": image.key,
        "ref": policy_ref(cached) or None,
        "source": image.source,
        "rootfs": str(image.rootfs),
        "size_bytes": image.size_bytes,
        "content_bytes": cached.content_bytes,
        "created_at": cached.created_at,
        "last_used": _iso(cached.last_used),
        "config": image.config.to_dict(),
        "origin": dict(cached.origin),
    }


def print_user_images(images: list[CachedImage]) -> None:
    """One line per user image: digest, size, last used, source."""
    if not images:
        return
    sys.stdout.write("user images (most recently used first):\n")
    for cached in images:
        image = cached.image
        sys.stdout.write(
            f"  {image.key[7:19]}  {cached.content_bytes / (1 << 20):7.0f} MiB  "
            f"used {_iso(cached.last_used)}  {image.source}\n"
        )


def _print_result(cached: CachedImage, as_json: bool, verb: str) -> None:
    if as_json:
        print_json({"event": "image", "image": user_image_to_dict(cached)})
        return
    image = cached.image
    out = sys.stdout
    out.write(f"{verb} {image.source}\n")
    out.write(f"digest: {image.key}\n")
    out.write(f"rootfs: {image.rootfs} ({image.size_bytes / (1 << 20):.0f} MiB)\n")
    ref = policy_ref(cached)
    if ref:
        out.write(f"ref: {ref}\n")


def _pull(args: argparse.Namespace, make_progress: ProgressFactory) -> int:
    from cleanroom.config import load_config
    from cleanroom.images import pull_oci_image
    from cleanroom.policy import require_image_ref

    ref = require_image_ref(args.ref, "image reference")
    insecure = load_config().images.insecure_registries
    with contextlib.ExitStack() as stack:
        progress = make_progress(args.as_json, stack)
        cached = pull_oci_image(ref, insecure_registries=insecure, progress=progress)
    _print_result(cached, args.as_json, "pulled")
    return 0


def _import(args: argparse.Namespace, make_progress: ProgressFactory) -> int:
    from cleanroom.images import import_image

    with contextlib.ExitStack() as stack:
        progress = make_progress(args.as_json, stack)
        cached = import_image(Path(args.file), name=args.name, progress=progress)
    _print_result(cached, args.as_json, "imported")
    if not args.as_json:
        sys.stdout.write(
            f"use it in cleanroom.yaml:\n  sandbox:\n    image:\n      ref: {cached.image.key}\n"
        )
    return 0


def _prepare(args: argparse.Namespace, make_progress: ProgressFactory) -> int:
    from cleanroom.config import load_config
    from cleanroom.images import ensure_cached_image
    from cleanroom.policy import load_policy

    policy = load_policy(Path(args.directory))
    if policy.image is None:
        if args.as_json:
            print_json({"event": "image", "image": None})
        else:
            sys.stdout.write("the policy names no image: runs use the built-in image\n")
        return 0
    with contextlib.ExitStack() as stack:
        progress = make_progress(args.as_json, stack)
        cached = ensure_cached_image(policy.image, images=load_config().images, progress=progress)
    _print_result(cached, args.as_json, "ready:")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from cleanroom.images import remove_user_images

    removed = remove_user_images(list(args.selectors))
    if args.as_json:
        print_json({"removed": [c.image.key for c in removed]})
    else:
        for cached in removed:
            sys.stdout.write(f"removed {cached.image.key[7:19]}  {cached.image.source}\n")
    return 0


def register_user_commands(group: Subcommands, make_progress: ProgressFactory) -> None:
    """Add ``pull``, ``import``, ``prepare`` and ``rm`` to the ``image`` group."""

    def with_progress(
        name: str, run: Callable[[argparse.Namespace, ProgressFactory], int], help_text: str
    ) -> argparse.ArgumentParser:
        return add_command(group, name, lambda args: run(args, make_progress), help_text)

    pull = with_progress(
        "pull",
        _pull,
        "Pull a digest-pinned OCI/Docker image into the cache (no network on a cache hit).",
    )
    pull.add_argument("ref", help="NAME[:TAG]@sha256:<64 hex>")
    imp = with_progress(
        "import",
        _import,
        "Import a docker save archive, an OCI archive or layout, or a root filesystem "
        "tarball; prints the ref to put in a policy.",
    )
    imp.add_argument("file", help="The archive (or OCI layout directory).")
    imp.add_argument("--name", help="Name shown as the source. [default: the file name]")
    prepare = with_progress(
        "prepare",
        _prepare,
        "Pull or build the image a repository's policy names (a cache hit if it exists).",
    )
    prepare.add_argument("directory", nargs="?", default=".", help="The repository. [default: .]")
    rm = add_command(
        group, "rm", _rm, "Remove user images by digest (a unique prefix) or exact source."
    )
    rm.add_argument("selectors", nargs="+", metavar="IMAGE")
    for parser in (pull, imp, prepare, rm):
        add_json(parser, _JSON_HELP)  # last: --json ends each command's options
