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

from cleanroom.cli.options import add_cwd
from cleanroom.models import LaunchOptions

__all__ = ["add_launch_arguments", "launch_options", "prepare_launch_image"]


def add_launch_arguments(parser: argparse.ArgumentParser, cwd_help: str) -> None:
    """Add what a launch is made of: the directory (``args.cwd``, see ``add_cwd``),
    ``--backend``, ``--read-only``, ``--image REF`` (``args.image``) and
    ``--expect-policy-hash HASH`` (``args.expect_policy_hash``)."""
    add_cwd(parser, cwd_help)
    parser.add_argument("--backend", help="Backend (default: config).")
    parser.add_argument("--read-only", action="store_true", help="Mount the workspace read-only.")
    parser.add_argument(
        "--image",
        metavar="REF",
        help="Run in this digest-pinned image instead of the policy's "
        "(NAME@sha256:..., or the sha256:... that `image import` printed).",
    )
    parser.add_argument(
        "--expect-policy-hash",
        metavar="HASH",
        help="Refuse (policy_conflict) unless the directory's policy has this hash "
        "(as `cleanroom policy validate` prints it).",
    )


def launch_options(
    read_only: bool, image: str | None, expected_policy_hash: str | None = None
) -> LaunchOptions | None:
    """The launch options of ``--read-only``, ``--image`` and ``--expect-policy-hash``
    (None: none given)."""
    if not read_only and image is None and expected_policy_hash is None:
        return None
    return LaunchOptions(
        read_only_workspace=True if read_only else None,
        image=image,
        expected_policy_hash=expected_policy_hash,
    )


def prepare_launch_image(
    cwd: Path, override: str | None, expected_policy_hash: str | None = None
) -> None:
    """Pull or build the image a launch in ``cwd`` will use, showing progress.

    Nothing happens for the built-in image, nor for a policy the server will
    refuse (not the ``expected_policy_hash``, or over the runtime config's
    ceiling): nothing is pulled for it. Raises CleanroomError.
    """
    from cleanroom.config import load_config
    from cleanroom.policy import ceiling_excess, load_policy, require_image_ref, select_image

    config = load_config()
    policy = load_policy(cwd)
    if expected_policy_hash is not None and not policy.has_hash(expected_policy_hash):
        return
    ceiling = config.policy.ceiling
    if ceiling is not None:
        ref = None if override is None else require_image_ref(override, "image override")
        if ceiling_excess(policy, ceiling, image_override=ref):
            return
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
