"""Time to get a large workspace into the guest.

Builds a workspace of about 100 MiB (many small files and a few large ones),
runs ``du -s /workspace`` in a fresh guest N times through the service, and
reports from each run record: archive preparation (overlaps the boot),
transfer + extraction in the guest, and their sum.

Usage: ``python bench/workspace.py [-n N] [--mib 100] [--accel tcg] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report, summarize, with_facts

from cleanroom.backends.qemu import QemuConfig
from cleanroom.config import RuntimeConfig
from cleanroom.service import Service


def make_big_workspace(root: Path, mib: int) -> tuple[Path, int, int]:
    """~``mib`` MiB: 10 % as 4 KiB files in nested directories, the rest in 3 large files."""
    ws = root / "big"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text("version: 1\n")
    small_total = mib * (1 << 20) // 10
    n_small = small_total // 4096
    for i in range(n_small):
        d = ws / "src" / f"pkg{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i % 100:03d}.py").write_bytes(os.urandom(4096))
    large = (mib * (1 << 20) - small_total) // 3
    for j in range(3):
        (ws / f"blob{j}.bin").write_bytes(os.urandom(large))
    return ws, n_small + 4, mib * (1 << 20)


async def _run(n: int, ws: Path, accel: str) -> list[dict[str, Any]]:
    svc = Service(RuntimeConfig(qemu=QemuConfig(accel=accel, launch_seconds=180)))  # type: ignore[arg-type]
    await svc.start()
    records = []
    try:
        info = await svc.launch(ws)
        for _ in range(n):
            r = await svc.run(info.cleanroom_id, ["du", "-sm", "/workspace"])
            assert r.exit_code == 0, r.stderr
            records.append(await svc.run_record(r.run_id))
    finally:
        await svc.close()
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-ws-") as tmp:
        ws, files, size = make_big_workspace(Path(tmp), args.mib)
        records = asyncio.run(_run(args.n, ws, args.accel))
    # Host-made disk (cold runs): disk creation + the agent's read-only/ack round trip.
    # Streamed (warm or special files): archive + transfer + extraction in the guest.
    disk = [(r["workspace_disk_ms"] or 0.0) + (r["workspace_archive_ms"] or 0.0) for r in records]
    transfer = [r["workspace_transfer_ms"] for r in records]
    total = [a + t for a, t in zip(disk, transfer, strict=True)]
    stats = {
        "prepare_on_host": summarize(disk),
        "agent_side": summarize(transfer),
        "total": summarize(total),
    }
    methods = sorted({r["workspace"]["method"] for r in records})
    summary = {
        "workspace_mib": args.mib,
        "files": files,
        "bytes": size,
        "workspace_ms": stats["total"]["median"],
        "method": methods,
        "mib_per_s": round(args.mib / (stats["total"]["median"] / 1000), 1),
    }
    out = with_facts(summary, runs=args.n, accel=args.accel, stats=stats)
    report(
        out,
        as_json=args.json,
        title=f"{args.mib} MiB workspace, {files} files ({args.n} runs, accel={args.accel})",
        rows=list(stats.items()),
        footer=f"\nmethod {methods}, {out['mib_per_s']} MiB/s end to end   host {out['host']}",
    )


if __name__ == "__main__":
    main()
