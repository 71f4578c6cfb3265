"""Runs in a user image: cold boot versus restored from the image's own snapshot.

An OCI image (busybox, new each time) is pushed to a docker-registry on
127.0.0.1 and pulled into the image cache (removed again at the end, with its
snapshots). Two servers run side by side: one with snapshots
off (every run boots cold) and one whose snapshots of that image are made
first with ``cleanroom image warm REF`` (its own config, so the same key).
``POST /v1/exec`` of ``sh -c true`` in a workspace whose policy names the image;
cold and restored samples alternate, so the host's load drifting weighs on
both alike.

Usage: ``python bench/userimage_snapshots.py [-n N] [--accel tcg] [--json]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CLI, report, serve, summarize, with_facts
from images import _push_image, _registry

from cleanroom.images import pull_oci_image, remove_user_images
from cleanroom.policy.image import parse_image_ref

if TYPE_CHECKING:
    from cleanroom.client import Client


def _timed_exec(c: Client, ws: Path) -> tuple[float, str, str | None]:
    """``POST /v1/exec`` of ``sh -c true`` in ``ws`` (the image has busybox's ``sh`` and no
    ``true``): ms, how the guest started, and why not restored."""
    t0 = time.perf_counter()
    r = c.exec(ws, ["sh", "-c", "true"])
    ms = (time.perf_counter() - t0) * 1000
    assert r.exit_code == 0
    record = c.run_record(r.run_id)
    return ms, str(record["start"]), record.get("start_fallback")


def _measure(
    args: argparse.Namespace,
    ref: str,
    ws: Path,
    tmp: Path,
    rows: dict[str, list[float]],
    starts: dict[str, int],
    fallbacks: dict[str, int],
) -> float:
    """Fill ``rows`` (cold and restored samples, alternating); the ms ``image warm`` took."""
    with (
        serve(tmp / "cold", pool_size=0, accel=args.accel) as cold_server,
        serve(tmp / "restored", pool_size=0, accel=args.accel, snapshots=True) as restorer,
        cold_server.client() as cold,
        restorer.client() as restoring,
    ):
        t0 = time.perf_counter()
        subprocess.run([CLI, "image", "warm", ref], env=restorer.env, check=True, stdout=sys.stderr)
        warm_ms = (time.perf_counter() - t0) * 1000
        for _ in range(args.n):
            rows["userimage_cold"].append(_timed_exec(cold, ws)[0])
            ms, start, fallback = _timed_exec(restoring, ws)
            rows["userimage_restored"].append(ms)
            starts[start] = starts.get(start, 0) + 1
            if fallback:
                fallbacks[fallback] = fallbacks.get(fallback, 0) + 1
    return warm_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="iterations per mode")
    ap.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows: dict[str, list[float]] = {"userimage_cold": [], "userimage_restored": []}
    starts: dict[str, int] = {}
    fallbacks: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with _registry(tmp / "registry") as host:
            ref = _push_image(tmp, host, "snap", 0)
            cached = pull_oci_image(parse_image_ref(ref))
        ws = tmp / "repo"
        ws.mkdir()
        (ws / "cleanroom.yaml").write_text(f"version: 1\nsandbox:\n  image:\n    ref: {ref}\n")
        try:
            warm_ms = _measure(args, ref, ws, tmp, rows, starts, fallbacks)
        finally:
            remove_user_images([cached.image.key])
    stats = {k: summarize(v) for k, v in rows.items()}
    summary = {
        "userimage_cold_ms": stats["userimage_cold"]["median"],
        "userimage_restored_ms": stats["userimage_restored"]["median"],
        "userimage_restored_over_cold": round(
            stats["userimage_restored"]["median"] / stats["userimage_cold"]["median"], 3
        ),
        "userimage_warm_cli_ms": round(warm_ms, 1),
        "restored_server_starts": starts,
        "fallbacks": fallbacks,
    }
    out = with_facts(summary, runs=args.n, stats=stats)
    report(
        out,
        as_json=args.json,
        title="exec true in a user image: cold vs restored",
        rows=list(stats.items()),
        footer=(
            f"\nrestored/cold {summary['userimage_restored_over_cold']}   "
            f"image warm {summary['userimage_warm_cli_ms']:.0f} ms   starts {starts}   "
            f"fallbacks {fallbacks}   host {out['host']}"
        ),
    )


if __name__ == "__main__":
    main()
