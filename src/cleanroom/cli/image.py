"""``cleanroom image ...``: build, list and verify the guest image (no server needed).

``build [--force] [--json]`` builds the image for the current inputs unless it
is cached (progress on stderr: a live bar on a terminal, plain lines
otherwise; with ``--json`` every progress event and the result are JSON lines
on stdout). ``ls [--json]`` lists cached images, marking the current one.
``verify [DIGEST] [--json]`` re-hashes every file of the current (or the
named) image. ``prune [--keep N] [--json]`` deletes all but the current image
and the N newest others. Errors print their stable code; the exit status is the error's
``exit_code``.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Any

import typer

from cleanroom.cli.output import print_json, report_error
from cleanroom.errors import CleanroomError, ImageUnavailable
from cleanroom.images import (
    GuestImage,
    JsonProgress,
    PlainProgress,
    Progress,
    RichProgress,
    current_image,
    ensure_image,
    list_images,
    prune_images,
    verify_image,
)

__all__ = ["image_to_dict", "register"]

image_app = typer.Typer(
    name="image",
    help="Build, list and verify the guest image (kernel, initramfs, rootfs).",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON lines instead of text.")]


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


@image_app.command("build")
def build(
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if the image is cached.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Build the guest image for the current inputs (a cache hit if it exists)."""
    with contextlib.ExitStack() as stack:
        progress: Progress
        if as_json:
            progress = JsonProgress(sys.stdout)
        elif sys.stderr.isatty():
            progress = stack.enter_context(RichProgress())
        else:
            progress = PlainProgress(sys.stderr)
        try:
            image = ensure_image(force=force, progress=progress)
        except CleanroomError as exc:
            stack.close()
            raise typer.Exit(report_error(exc, as_json=as_json)) from exc
    if as_json:
        print_json({"event": "image", "image": image_to_dict(image)})
    else:
        _print_image(image)


@image_app.command("ls")
def ls(as_json: JsonFlag = False) -> None:
    """List the cached images, newest first; ``*`` marks the one for the current inputs."""
    images = list_images()
    current = current_image()
    current_digest = current.digest if current is not None else None
    if as_json:
        print_json(
            {
                "current": current_digest,
                "images": [image_to_dict(i) for i in images],
            }
        )
        return
    if not images:
        sys.stdout.write("no images (run: cleanroom image build)\n")
        return
    for image in images:
        mark = "*" if image.digest == current_digest else " "
        size = sum(int(e["size"]) for e in image.manifest["artifacts"].values())
        sys.stdout.write(
            f"{mark} {image.digest[:12]}  {image.manifest.get('built_at')}  "
            f"kernel {image.kernel_version}  agent {image.agent_version}  "
            f"{size / (1 << 20):.0f} MiB\n"
        )


def _select(digest: str | None) -> GuestImage:
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


@image_app.command("verify")
def verify(
    digest: Annotated[
        str | None,
        typer.Argument(help="Digest (or unique prefix) of the image; default: the current one."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-hash every file of the image against its manifest."""
    try:
        image = _select(digest)
        verify_image(image)
    except CleanroomError as exc:
        raise typer.Exit(report_error(exc, as_json=as_json)) from exc
    if as_json:
        print_json({"verified": True, "image": image_to_dict(image)})
    else:
        sys.stdout.write(f"image {image.digest[:12]} verified: every file matches its sha256\n")


@image_app.command("prune")
def prune(
    keep: Annotated[
        int, typer.Option("--keep", min=0, help="Older images to keep besides the current one.")
    ] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Delete cached images except the current one and the KEEP newest others."""
    try:
        removed = prune_images(keep=keep)
    except CleanroomError as exc:
        raise typer.Exit(report_error(exc, as_json=as_json)) from exc
    if as_json:
        print_json({"removed": removed})
    else:
        for digest in removed:
            sys.stdout.write(f"removed {digest[:12]}\n")
        sys.stdout.write(f"{len(removed)} image(s) removed\n")


def register(app: typer.Typer) -> None:
    """Add the ``image`` command group to ``app``."""
    app.add_typer(image_app, name="image")
