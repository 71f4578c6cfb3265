"""``cleanroom image ...``: the guest image and user images (no server needed).

``build [--force] [--json]`` builds the guest image for the current inputs unless it
is cached (progress on stderr: a live bar on a terminal, plain lines
otherwise; with ``--json`` every progress event and the result are JSON lines
on stdout). ``ls [--json]`` lists cached guest images, marking the current one,
then the user images. ``verify [DIGEST] [--json]`` re-hashes every file of the
current (or the named) guest image. ``prune [--keep N] [--unused DAYS] [--json]``
deletes all but the current guest image and the N newest others, and with
``--unused`` the user images not used for DAYS days. User images (see
:mod:`cleanroom.cli.image_user`): ``pull REF``, ``import FILE``, ``rm``. ``warm``
makes the snapshot runs are restored from (:mod:`cleanroom.cli.image_warm`).
Errors print their stable code; the exit status is the error's ``exit_code``.
"""

# The image builder (and rich, for the progress bar) load only when a command runs.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any

from cleanroom.cli.image_user import print_user_images, register_user_commands, user_image_to_dict
from cleanroom.cli.image_warm import register_warm_command
from cleanroom.cli.options import (
    Subcommands,
    add_command,
    add_group,
    add_json,
    non_negative_int,
)
from cleanroom.cli.output import print_json
from cleanroom.errors import ImageUnavailable

if TYPE_CHECKING:
    from cleanroom.images import GuestImage, Progress

__all__ = ["image_to_dict", "make_progress", "register"]

_JSON_HELP = "Print JSON lines instead of text."


def image_to_dict(image: GuestImage) -> dict[str, Any]:
    """The JSON form of an image, as the CLI prints it."""
    artifacts = image.manifest.get("artifacts", {})
    return {
        "digest": image.digest,
        "path": str(image.path),
        "kernel": str(image.kernel),
        "vmlinux": str(image.vmlinux),
        "initrd": str(image.initrd),
        "rootfs": str(image.rootfs),
        "kernel_version": image.kernel_version,
        "agent_version": image.agent_version,
        "built_at": image.manifest.get("built_at"),
        "build_seconds": image.manifest.get("build_seconds"),
        "sizes": {role: entry["size"] for role, entry in artifacts.items()},
    }


def _print_image(image: GuestImage) -> None:
    info = image_to_dict(image)
    out = sys.stdout
    out.write(f"digest: {info['digest']}\n")
    out.write(f"path: {info['path']}\n")
    out.write(f"kernel: {info['kernel_version']}  agent: {info['agent_version']}\n")
    out.write(f"built: {info['built_at']} in {info['build_seconds']} s\n")
    for role, size in sorted(info["sizes"].items()):
        out.write(f"  {role:8} {size / (1 << 20):7.1f} MiB\n")


def make_progress(as_json: bool, stack: contextlib.ExitStack) -> Progress:
    """JSON lines on stdout, a live bar on a terminal, or plain lines on stderr.

    The stack stops a live bar when it is left (before an error is printed).
    """
    from cleanroom.images import JsonProgress, PlainProgress, RichProgress

    if as_json:
        return JsonProgress(sys.stdout)
    if sys.stderr.isatty():
        return stack.enter_context(RichProgress())
    return PlainProgress(sys.stderr)


def _build(args: argparse.Namespace) -> int:
    from cleanroom.images import ensure_image

    with contextlib.ExitStack() as stack:
        image = ensure_image(force=args.force, progress=make_progress(args.as_json, stack))
    if args.as_json:
        print_json({"event": "image", "image": image_to_dict(image)})
    else:
        _print_image(image)
    return 0


def _ls(args: argparse.Namespace) -> int:
    from cleanroom.images import current_image, list_images, list_user_images

    images = list_images()
    current = current_image()
    current_digest = current.digest if current is not None else None
    user = list_user_images()
    if args.as_json:
        print_json(
            {
                "current": current_digest,
                "images": [image_to_dict(i) for i in images],
                "user_images": [user_image_to_dict(c) for c in user],
            }
        )
        return 0
    if not images:
        sys.stdout.write("no images (run: cleanroom image build)\n")
    for image in images:
        mark = "*" if image.digest == current_digest else " "
        size = sum(int(e["size"]) for e in image.manifest["artifacts"].values())
        sys.stdout.write(
            f"{mark} {image.digest[:12]}  {image.manifest.get('built_at')}  "
            f"kernel {image.kernel_version}  agent {image.agent_version}  "
            f"{size / (1 << 20):.0f} MiB\n"
        )
    print_user_images(user)
    return 0


def _select(digest: str | None) -> GuestImage:
    from cleanroom.images import current_image, list_images

    if digest is None:
        image = current_image()
        if image is None:
            raise ImageUnavailable(
                "no image is built for the current inputs",
                details={"hint": "run: cleanroom image build"},
            )
        return image
    matches = [i for i in list_images() if i.digest.startswith(digest)]
    if len(matches) != 1:
        raise ImageUnavailable(
            f"{len(matches)} cached images match digest {digest!r}",
            details={"hint": "see: cleanroom image ls"},
        )
    return matches[0]


def _verify(args: argparse.Namespace) -> int:
    from cleanroom.images import verify_image

    image = _select(args.digest)
    verify_image(image)
    if args.as_json:
        print_json({"verified": True, "image": image_to_dict(image)})
    else:
        sys.stdout.write(f"image {image.digest[:12]} verified: every file matches its sha256\n")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from cleanroom.images import prune_images, prune_user_images

    removed = prune_images(keep=args.keep)
    removed_user = []
    if args.unused is not None:
        removed_user = prune_user_images(unused_seconds=args.unused * 86400.0)
    if args.as_json:
        body: dict[str, Any] = {"removed": removed}
        if args.unused is not None:
            body["removed_user"] = [c.image.key for c in removed_user]
        print_json(body)
    else:
        for digest in removed:
            sys.stdout.write(f"removed {digest[:12]}\n")
        sys.stdout.write(f"{len(removed)} image(s) removed\n")
        if args.unused is not None:
            for cached in removed_user:
                sys.stdout.write(f"removed {cached.image.key[7:19]}  {cached.image.source}\n")
            sys.stdout.write(f"{len(removed_user)} user image(s) removed\n")
    return 0


def register(commands: Subcommands) -> None:
    """Add the ``image`` command group."""
    group = add_group(
        commands,
        "image",
        "The guest image (kernel, initramfs, rootfs) and user images (pull, import, rm).",
    )
    build = add_command(
        group,
        "build",
        _build,
        "Build the guest image for the current inputs (a cache hit if it exists).",
    )
    build.add_argument("--force", action="store_true", help="Rebuild even if the image is cached.")
    add_json(build, _JSON_HELP)
    ls = add_command(
        group,
        "ls",
        _ls,
        "List the cached guest images, newest first (`*` marks the one for the current "
        "inputs), then the user images, most recently used first.",
    )
    add_json(ls, _JSON_HELP)
    verify = add_command(
        group, "verify", _verify, "Re-hash every file of the image against its manifest."
    )
    verify.add_argument(
        "digest",
        nargs="?",
        help="Digest (or unique prefix) of the image; default: the current one.",
    )
    add_json(verify, _JSON_HELP)
    prune = add_command(
        group,
        "prune",
        _prune,
        "Delete cached images except the current one and the KEEP newest others.",
    )
    prune.add_argument(
        "--keep",
        type=non_negative_int,
        default=1,
        help="Older images to keep besides the current one. [default: 1]",
    )
    prune.add_argument(
        "--unused",
        type=non_negative_int,
        metavar="DAYS",
        help="Also delete user images not used for DAYS days (0: every user image).",
    )
    add_json(prune, _JSON_HELP)
    register_user_commands(group, make_progress)
    register_warm_command(group)
