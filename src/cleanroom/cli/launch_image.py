"""Make a launch's user image ready before asking a local server, with progress shown.

The server pulls or builds a missing image at launch too, but silently; a
``docker run`` user expects to watch a pull. When the server is the local one
(same user, same image cache), ``exec`` and ``launch`` first resolve the image
the server will choose (override, policy, runtime default) and pull or build
it here with a progress display on stderr; the server's launch is then a
cache hit. Errors are the server's own (``policy_invalid``,
``policy_conflict``, ``image_unavailable``), raised here a little earlier.
"""

# The policy and image code (and rich) load only when a command runs.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from cleanroom.models import LaunchOptions

__all__ = ["add_image_option", "launch_options", "prepare_launch_image"]


def add_image_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--image REF`` (``args.image``)."""
    parser.add_argument(
        "--image",
        metavar="REF",
        help="Run in this digest-pinned image instead of the policy's "
        "(NAME@sha256:..., or the sha256:... that `image import` printed).",
    )


def launch_options(read_only: bool, image: str | None) -> LaunchOptions | None:
    """The launch options of ``--read-only`` and ``--image`` (None: neither given)."""
    if not read_only and image is None:
        return None
    return LaunchOptions(read_only_workspace=True if read_only else None, image=image)


def prepare_launch_image(cwd: Path, override: str | None) -> None:
    """Pull or build the image a launch in ``cwd`` will use, showing progress.

    Nothing happens for the built-in image. Raises CleanroomError.
    """
    from cleanroom.config import load_config
    from cleanroom.policy import load_policy, select_image

    config = load_config()
    policy = load_policy(cwd)
    spec = select_image(
        policy.image,
        override=override,
        allow_override=config.images.allow_override,
        default=config.images.default,
    )
    if spec is None:
        return
    from cleanroom.images import PlainProgress, Progress, RichProgress, ensure_cached_image

    with contextlib.ExitStack() as stack:
        progress: Progress
        if sys.stderr.isatty():
            progress = stack.enter_context(RichProgress())
        else:
            progress = PlainProgress(sys.stderr)
        ensure_cached_image(spec, images=config.images, progress=progress)
