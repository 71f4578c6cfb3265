"""``cleanroom image warm [REF] [--json]``: make the guest snapshot runs are restored from.

Boots a guest with the runtime config's QEMU settings (accel, vCPUs, memory)
until its agent waits for a hello, saves it, and caches the snapshot beside
the image, unless a valid one exists already; the same again for the snapshot
with a NIC (networked runs, pooled guests). The output describes the one
without a NIC. Without ``REF`` the guest is of the built-in image; ``REF``
names a cached user image (digest prefix, source or pinned ref, as in
``image ls``), whose runs are then restored from snapshots of its own, kept
in its cache entry. Runs make them on first use anyway; this makes them ahead
of time. No server is needed.
"""

# The backend loads only when the command runs.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

from cleanroom.cli.options import Subcommands, add_command, add_json
from cleanroom.cli.output import print_json

if TYPE_CHECKING:
    from cleanroom.images import UserImage

__all__ = ["register_warm_command"]


async def _warm_now(image: UserImage | None) -> tuple[dict[str, Any], bool]:
    from cleanroom.backends.base import NoRestore
    from cleanroom.backends.qemu import QemuBackend
    from cleanroom.config import load_config

    backend = QemuBackend(load_config().qemu)
    try:
        await backend.prepare()
        snapshots = backend.snapshots_for(image)
        existed = not isinstance(snapshots, NoRestore) and await snapshots.find_quiet()
        snap = await backend.warm(image)
    finally:
        await backend.close()
    info: dict[str, Any] = {
        "key": snap.key,
        "path": str(snap.path),
        "bytes": snap.bytes,
        "created_at": snap.created_at,
        "facts": dict(snap.facts),
    }
    return info, bool(existed)


def _warm(args: argparse.Namespace) -> int:
    from cleanroom.images import find_user_image

    image = None if args.ref is None else find_user_image(args.ref).image
    started = time.monotonic()
    info, existed = asyncio.run(_warm_now(image))
    info["made"] = not existed
    info["seconds"] = round(time.monotonic() - started, 2)
    if args.as_json:
        print_json({"snapshot": info})
    else:
        verb = "found" if existed else f"made in {info['seconds']} s"
        sys.stdout.write(f"snapshot {info['key'][:12]} {verb}\n")
        if "user_image" in info["facts"]:
            sys.stdout.write(f"image: {info['facts']['user_image']}\n")
        sys.stdout.write(f"path: {info['path']}\n")
        sys.stdout.write(
            f"guest: {info['facts']['vcpus']} vCPU, {info['facts']['memory_mib']} MiB, "
            f"{info['facts']['accel']}; {info['bytes'] / (1 << 20):.1f} MiB on disk\n"
        )
    return 0


def register_warm_command(group: Subcommands) -> None:
    """Add ``image warm`` to the ``image`` command group."""
    warm = add_command(
        group,
        "warm",
        _warm,
        "Make the snapshot of a booted guest that runs are restored from (a cache hit "
        "if a valid one exists).",
    )
    warm.add_argument(
        "ref",
        nargs="?",
        help="A cached user image (digest prefix, source or pinned ref; default: the "
        "built-in image).",
    )
    add_json(warm, "Print the snapshot as JSON.")
