"""Density: N concurrent runs of a small command through one server.

Reports how many succeeded, the wall time, the CPU time the server and its
guests used, and the peak host memory above the idle baseline.

Usage: ``python bench/density.py [-n 20] [--accel tcg] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit_json, host_facts, make_workspace, serve

from cleanroom.client import AsyncClient
from cleanroom.errors import CleanroomError


def _mem_used_mib() -> float:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def _cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and of its reaped children (the guests' VMMs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / 100.0


async def _burst(host: str, ws: Path, n: int) -> list[bool]:
    async with AsyncClient(host) as client:

        async def one(i: int) -> bool:
            try:
                r = await client.exec(ws, ["sh", "-c", f"echo run {i}"])
            except CleanroomError as exc:
                print(f"run {i} failed: {exc}", file=sys.stderr)
                return False
            return r.exit_code == 0 and r.stdout == f"run {i}\n"

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-density-") as tmp:
        ws = make_workspace(Path(tmp))
        with serve(Path(tmp) / "srv", pool_size=0, accel=args.accel, launch_seconds=600) as srv:
            baseline = _mem_used_mib()
            peak = [baseline]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.1):
                    peak[0] = max(peak[0], _mem_used_mib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            cpu0 = _cpu_seconds(srv.proc.pid)
            t0 = time.perf_counter()
            ok = asyncio.run(_burst(srv.host, ws, args.n))
            wall = time.perf_counter() - t0
            cpu = _cpu_seconds(srv.proc.pid) - cpu0
            stop.set()
            sampler.join()
    out: dict[str, Any] = {
        "concurrent": args.n,
        "succeeded": sum(ok),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "cpu_s_per_run": round(cpu / args.n, 2),
        "peak_memory_mib": round(peak[0] - baseline),
        "accel": args.accel,
        "host": host_facts(),
    }
    if args.json:
        emit_json(out)
        return
    print(
        f"{out['succeeded']}/{args.n} succeeded in {out['wall_s']} s wall, "
        f"{out['cpu_s']} CPU-s ({out['cpu_s_per_run']} per run), "
        f"peak memory +{out['peak_memory_mib']} MiB   host {out['host']}"
    )


if __name__ == "__main__":
    main()
