"""Time to first command, side by side in one run.

1. floor: the same kernel, initramfs and rootfs booted by a minimal QEMU
   command line (written out here, no cleanroom server, service or backend
   code) to agent ready plus one ``true``. The only cleanroom code used is the
   agent protocol client, because the guest only speaks that protocol. Floor,
   cold and restored samples alternate.
2. cold: ``POST /v1/exec`` of ``true`` through a running server, pool disabled.
3. restored: the same with runs restored from the guest snapshot (made first
   by ``cleanroom image warm`` with the server's config; pool disabled).
   ``cold_big`` and ``restored_big``: the same two with a 100 MiB, 1,000-file
   workspace (it reaches the guest as a disk made on the host).
4. warm: the same with the warm pool (``pool.size: 1``, refills restored from
   the snapshot; the pool is refilled between samples, and idles
   ``POOL_SETTLE_SECONDS`` once ready: a ready guest gets more self-test passes
   while it waits, ``warm_self_test_passes``). ``refill_ms``: how long each
   refill took (restore to ready: self-tested once, from the run records).
   ``warm_big``: the 100 MiB workspace on the same server (big workspaces do
   not stream through the agent: they take a guest restored with their own disk).
5. cli_warm: the whole ``cleanroom exec -- true`` process against the warm server.
6. sustained: ``--sustained K`` (default 100; 0 skips) sequential ``exec -- true``
   against the warm server without waiting for the pool: the average per run.
7. memory: RSS and PSS of each restored guest's QEMU process, two alive at once.


Usage: ``python bench/tti.py [-n N] [--sustained K] [--accel tcg|kvm|auto] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CLI, floor_argv, make_workspace, report, serve, summarize, time_true, with_facts

from cleanroom.images import ensure_image

if TYPE_CHECKING:
    from cleanroom.client import Client


POOL_SETTLE_SECONDS = 1.0
"""How long the warm samples let a ready pooled guest idle before taking it."""


async def _floor_once(tmp: Path, accel: str) -> float:
    sock_path = tmp / "floor.sock"
    sock_path.unlink(missing_ok=True)
    argv = floor_argv(ensure_image(), accel, sock_path)
    return await time_true(argv, sock_path, hello_timeout=120)


def _big_workspace(root: Path) -> Path:
    """A deny-all repository of 1,000 files, 100 MiB in all (random bytes)."""
    ws = root / "big"
    for i in range(1000):
        d = ws / f"pkg{i // 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:04d}.bin").write_bytes(os.urandom(100 << 10))
    (ws / "cleanroom.yaml").write_text("version: 1\n")
    return ws


FALLBACKS: dict[str, int] = {}
"""Why guests meant to be restored (runs' and pooled ones) booted instead, and how often."""


def _note_fallbacks(record: dict[str, Any]) -> None:
    pooled = record.get("pool_guest") or {}
    for reason in (record.get("start_fallback"), pooled.get("start_fallback")):
        if reason:
            FALLBACKS[reason] = FALLBACKS.get(reason, 0) + 1


def _timed_exec(c: Client, ws: Path) -> tuple[float, str]:
    """``POST /v1/exec`` of ``true`` in ``ws``: its ms and how the guest started."""
    t0 = time.perf_counter()
    r = c.exec(ws, ["true"])
    ms = (time.perf_counter() - t0) * 1000
    assert r.exit_code == 0
    record = c.run_record(r.run_id)
    _note_fallbacks(record)
    return ms, str(record["start"])


def _qemu_memory(server_pid: int) -> list[dict[str, int]]:
    """RSS, PSS and private KiB of each QEMU process ``server_pid`` started."""
    found: list[dict[str, int]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith("qemu-system"):
                continue
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != server_pid:
                continue
            rollup = (entry / "smaps_rollup").read_text().splitlines()[1:]
        except (OSError, ValueError, IndexError):
            continue
        kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in rollup)}
        private = kib["Private_Clean"] + kib["Private_Dirty"]
        found.append({"rss_kib": kib["Rss"], "pss_kib": kib["Pss"], "private_kib": private})
    return found


def _memory_of_restored(server_pid: int, c: Client, ws: Path) -> list[dict[str, int]]:
    """Two restored guests alive at once (each runs ``sleep``): their QEMU's memory."""
    threads = [threading.Thread(target=c.exec, args=(ws, ["sleep", "4"])) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    sample: list[dict[str, int]] = []
    while time.monotonic() < deadline and len(sample) < 2:
        time.sleep(0.5)
        sample = _qemu_memory(server_pid)
    time.sleep(1.0)  # both past their restore and configure
    sample = _qemu_memory(server_pid) or sample
    for t in threads:
        t.join()
    return sample


def _cli_once(host: str, ws: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(
        [CLI, "exec", "--host", host, "-c", str(ws), "--", "true"],
        capture_output=True,
        check=False,
    )
    elapsed = (time.perf_counter() - t0) * 1000
    if out.returncode != 0:
        raise RuntimeError(f"cleanroom exec failed: {out.stderr.decode()}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="iterations per mode")
    ap.add_argument(
        "--sustained", type=int, default=100, help="sequential runs for sustained_ms (0: skip)"
    )
    ap.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    floor_accel = "tcg" if args.accel == "auto" else args.accel
    ensure_image()
    results: dict[str, list[float]] = {
        "floor": [],
        "cold": [],
        "restored": [],
        "cold_big": [],
        "restored_big": [],
        "warm": [],
        "refill": [],
        "warm_big": [],
        "cli_warm": [],
        "sustained": [],
    }
    pool_hits = restored_hits = 0
    passes: list[int | None] = []
    starts: dict[str, dict[str, int]] = {"warm_big": {}, "sustained": {}}
    memory: list[dict[str, int]] = []
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ws = make_workspace(tmp)
        big = _big_workspace(tmp)
        # Floor, cold and restored samples alternate, so the host's own load
        # drifting during the run weighs on all alike (the ratios are the point).
        with (
            serve(tmp / "cold", pool_size=0, accel=args.accel) as cold_server,
            serve(tmp / "restored", pool_size=0, accel=args.accel, snapshots=True) as restorer,
            cold_server.client() as cold,
            restorer.client() as restoring,
        ):
            # The snapshot is made ahead, with the server's own config (same key).
            subprocess.run([CLI, "image", "warm"], env=restorer.env, check=True, stdout=sys.stderr)
            for _ in range(args.n):
                results["floor"].append(asyncio.run(_floor_once(tmp, floor_accel)))
                results["cold"].append(_timed_exec(cold, ws)[0])
                results["cold_big"].append(_timed_exec(cold, big)[0])
                for key, where in (("restored", ws), ("restored_big", big)):
                    ms, start = _timed_exec(restoring, where)
                    results[key].append(ms)
                    restored_hits += start == "restored"
            memory = _memory_of_restored(restorer.proc.pid, restoring, ws)
        with serve(tmp / "warm", pool_size=1, accel=args.accel, snapshots=True) as server:
            with server.client() as c:
                for _ in range(args.n):
                    server.wait_pool()
                    # A ready guest is polished while it waits (more self-test
                    # passes, see cleanroom.service.pool): a pool that has been
                    # idle for a moment, as between a user's commands.
                    time.sleep(POOL_SETTLE_SECONDS)
                    t0 = time.perf_counter()
                    r = c.exec(ws, ["true"])
                    results["warm"].append((time.perf_counter() - t0) * 1000)
                    record = c.run_record(r.run_id)
                    _note_fallbacks(record)
                    pool_hits += record["pool"] == "hit"
                    pooled = record.get("pool_guest") or {}
                    passes.append(pooled.get("self_test_passes"))
                    if pooled.get("start") == "restored":
                        results["refill"].append(float(pooled["boot_ms"]))
                for _ in range(args.n):
                    server.wait_pool()
                    ms, start = _timed_exec(c, big)
                    results["warm_big"].append(ms)
                    starts["warm_big"][start] = starts["warm_big"].get(start, 0) + 1
                server.wait_pool()
                for _ in range(args.sustained):
                    ms, start = _timed_exec(c, ws)
                    results["sustained"].append(ms)
                    starts["sustained"][start] = starts["sustained"].get(start, 0) + 1
            for _ in range(args.n):
                server.wait_pool()
                results["cli_warm"].append(_cli_once(server.host, ws))
    stats = {k: summarize(v) for k, v in results.items() if v}
    floor = stats["floor"]["median"]

    def median(key: str) -> float | None:
        return stats[key]["median"] if key in stats else None

    def over_floor(value: float | None) -> float | None:
        return None if value is None else round(value / floor, 3)

    sustained = (
        round(sum(results["sustained"]) / len(results["sustained"]), 1)
        if results["sustained"]
        else None
    )
    summary: dict[str, Any] = {
        "floor_ms": stats["floor"]["median"],
        "cold_ms": stats["cold"]["median"],
        "restored_ms": stats["restored"]["median"],
        "cold_big_ms": stats["cold_big"]["median"],
        "restored_big_ms": stats["restored_big"]["median"],
        "warm_ms": stats["warm"]["median"],
        "warm_self_test_passes": passes,
        "refill_ms": median("refill"),
        "refill_over_floor": over_floor(median("refill")),
        "warm_big_ms": median("warm_big"),
        "warm_big_over_floor": over_floor(median("warm_big")),
        "warm_big_starts": starts["warm_big"],
        "sustained_ms": sustained,
        "sustained_over_floor": over_floor(sustained),
        "sustained_runs": len(results["sustained"]),
        "sustained_starts": starts["sustained"],
        "restored_memory": memory,
        "fallbacks": FALLBACKS,
        "cli_warm_ms": stats["cli_warm"]["median"],
        "cold_over_floor": round(stats["cold"]["median"] / stats["floor"]["median"], 3),
        "restored_over_floor": round(stats["restored"]["median"] / stats["floor"]["median"], 3),
        "restored_big_over_floor": round(
            stats["restored_big"]["median"] / stats["floor"]["median"], 3
        ),
        "warm_over_cold": round(stats["warm"]["median"] / stats["cold"]["median"], 4),
        "warm_pool_hits": pool_hits,
        "restored_hits": restored_hits,
    }
    out = with_facts(summary, runs=args.n, accel=args.accel, stats=stats)
    report(
        out,
        as_json=args.json,
        title=f"time to first command ({args.n} runs each, accel={args.accel})",
        rows=[(k, stats[k]) for k in results if k in stats],
        footer=(
            f"\ncold/floor {out['cold_over_floor']}   "
            f"restored/floor {out['restored_over_floor']}   "
            f"restored_big/floor {out['restored_big_over_floor']}   "
            f"warm/cold {out['warm_over_cold']}   restored {restored_hits}/{2 * args.n}   "
            f"warm pool hits {pool_hits}/{args.n}   host {out['host']}\n"
            f"refill/floor {out['refill_over_floor']}   "
            f"warm_big/floor {out['warm_big_over_floor']} {starts['warm_big']}   "
            f"sustained {sustained} ms/run (/floor {out['sustained_over_floor']}) "
            f"{starts['sustained']}\n"
            f"restored guests' QEMU memory (KiB): {memory}\nfallbacks: {FALLBACKS}"
        ),
    )


if __name__ == "__main__":
    main()
