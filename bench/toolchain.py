"""Cold ``exec -- true`` in a toolchain image against the bare-VMM floor for that image.

The toolchain image is a Debian package list (default: git, nodejs, npm),
built with mmdebstrap on first use and then a cache hit.

1. floor: the runtime kernel, initramfs and rootfs plus the toolchain image
   attached read-only and an empty writable layer over it, booted by a minimal
   QEMU command line written out here (no cleanroom server, service or
   backend code), to agent ready plus one ``true`` run inside the image (as
   every command in a user image runs), with the same empty workspace disk a
   run gets, and a console device as every guest has (its log goes to a
   file). Only the agent protocol client and the disk format's constants are
   cleanroom's. The disks are made before the clock starts.
2. cold: ``POST /v1/exec`` of ``true`` through a running server, pool
   disabled, with a policy naming the same image (the launch is a cache hit).

Floor and cold samples alternate. Usage:
``python bench/toolchain.py [-n N] [--accel tcg|kvm] [--packages git,nodejs,npm] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import floor_argv, report, serve, summarize, time_true, with_facts

from cleanroom.backends.workspace_disk import (
    SCRATCH_LABEL,
    SCRATCH_SETTINGS_NAME,
    WORKSPACE_LABEL,
)
from cleanroom.images import UserImage, build_debian_image, ensure_image
from cleanroom.policy.image import DebianImage

_DISK_BYTES = 16 << 30  # the service's default disk size (sparse)


def _disk(tmp: Path, name: str, label: str, files: dict[str, str]) -> Path:
    """A sparse ext4 disk of the service's default size, labelled, holding ``files``."""
    seed = tmp / f"{name}-seed"
    seed.mkdir(exist_ok=True)
    for file, text in files.items():
        (seed / file).write_text(text)
    path = tmp / f"{name}.ext4"
    path.unlink(missing_ok=True)
    with path.open("wb") as f:
        f.truncate(_DISK_BYTES)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0",
         "-E", "lazy_itable_init=1,root_owner=0:0", "-L", label,
         "-d", str(seed), str(path)],
        check=True,
    )  # fmt: skip
    return path


async def _floor_once(tmp: Path, accel: str, image: UserImage) -> float:
    runtime = ensure_image()
    # The disks a run gets: an empty workspace, and the writable layer holding
    # the image's settings.
    workspace = _disk(tmp, "workspace", WORKSPACE_LABEL, {})
    settings = json.dumps(image.config.to_dict())
    scratch = _disk(tmp, "scratch", SCRATCH_LABEL, {SCRATCH_SETTINGS_NAME: settings})
    sock_path = tmp / "floor.sock"
    sock_path.unlink(missing_ok=True)
    argv = floor_argv(
        runtime,
        accel,
        sock_path,
        image_mode=True,
        drives=[
            ("ws", f"file={workspace},format=raw,if=none,cache=unsafe"),
            ("image", f"file={image.rootfs},format=raw,if=none,readonly=on"),
            ("scratch", f"file={scratch},format=raw,if=none,cache=unsafe"),
        ],
        console=tmp / "console.log",
    )
    try:
        return await time_true(argv, sock_path, hello_timeout=180)
    finally:
        scratch.unlink(missing_ok=True)
        workspace.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="iterations per mode")
    ap.add_argument("--accel", default="tcg", choices=["tcg", "kvm"])
    ap.add_argument("--packages", default="git,nodejs,npm", help="the Debian packages")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    packages = tuple(sorted(set(args.packages.split(","))))
    image = build_debian_image(DebianImage(None, packages)).image
    results: dict[str, list[float]] = {"floor": [], "cold": []}
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ws = tmp / "repo"
        ws.mkdir()
        listed = ", ".join(packages)
        (ws / "cleanroom.yaml").write_text(
            f"version: 1\nsandbox:\n  image:\n    debian:\n      packages: [{listed}]\n"
        )
        with (
            serve(tmp / "cold", pool_size=0, accel=args.accel, launch_seconds=180) as server,
            server.client() as c,
        ):
            for i in range(args.n):
                # Which goes first alternates too: a run's background cleanup
                # overlaps the next sample, whichever kind it is.
                if i % 2 == 0:
                    results["floor"].append(asyncio.run(_floor_once(tmp, args.accel, image)))
                t0 = time.perf_counter()
                r = c.exec(ws, ["true"])
                results["cold"].append((time.perf_counter() - t0) * 1000)
                assert r.exit_code == 0, r
                if i % 2 == 1:
                    results["floor"].append(asyncio.run(_floor_once(tmp, args.accel, image)))
            record = c.run_record(r.run_id)
    stats = {k: summarize(v) for k, v in results.items()}
    summary = {
        "image": {"key": image.key, "source": image.source, "size_bytes": image.size_bytes},
        "floor_ms": stats["floor"]["median"],
        "cold_ms": stats["cold"]["median"],
        "cold_over_floor": round(stats["cold"]["median"] / stats["floor"]["median"], 3),
        "last_cold_record": {
            k: record.get(k)
            for k in ("rootfs_prepare_ms", "workspace_disk_ms", "vmm_start_ms", "vm_ready_ms")
        },
    }
    out = with_facts(summary, runs=args.n, accel=args.accel, stats=stats)
    report(
        out,
        as_json=args.json,
        title=f"cold exec -- true in {image.source} ({args.n} runs each, accel={args.accel})",
        rows=[(k, stats[k]) for k in ("floor", "cold")],
        footer=f"\ncold/floor {out['cold_over_floor']}   last cold run {out['last_cold_record']}",
    )


if __name__ == "__main__":
    main()
