"""What workspace-change detection adds to a whole run through the service.

A 100 MiB, 1,000-file workspace; the command appends to one file. Each
repetition runs it twice through the real service, once with a writable
workspace (changes collected) and once read-only (nothing collected), and
reads the run records: ``changes_ms`` (collection through the agent, before
the answer), ``workspace_baseline_ms`` (the agent's baseline on a host-made
disk), ``workspace_transfer_ms`` (the host's manifest is read from the
streamed archive in parallel) and ``total_ms``.

Default guests are the real agent as host processes (the streamed path);
``--vm`` boots real QEMU guests (TCG here; the host-made disk path).

Usage: ``python bench/run_changes.py [-n N] [--vm] [--json]``
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

from common import emit_json, host_facts, print_table, summarize

from cleanroom.config import QemuConfig, RuntimeConfig
from cleanroom.service import LaunchOptions, Service
from cleanroom.service.record import read_record
from cleanroom.testing import agent_service

KEYS = ("workspace_transfer_ms", "workspace_baseline_ms", "changes_ms", "total_ms")


def make_workspace(root: Path, mib: int = 100, files: int = 1000) -> Path:
    ws = root / "ws"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text("version: 1\n")
    size = mib * (1 << 20) // files
    for i in range(files):
        d = ws / f"dir{i // 100:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:04d}.bin").write_bytes(os.urandom(size))
    return ws


async def measure(n: int, vm: bool, root: Path) -> dict[str, dict[str, list[float]]]:
    ws = make_workspace(root)
    if vm:
        svc = Service(
            RuntimeConfig(qemu=QemuConfig(accel="tcg", launch_seconds=180), run_dir_roots=(root,))
        )
    else:
        svc = agent_service(config=RuntimeConfig(default_backend="qemu", run_dir_roots=(root,)))
    await svc.start()
    samples: dict[str, dict[str, list[float]]] = {"rw": {}, "ro": {}}
    try:
        for _ in range(n):
            for mode in ("rw", "ro"):
                result = await svc.exec(
                    ws,
                    ["sh", "-c", "echo x >> dir00/f0000.bin"],
                    options=LaunchOptions(run_dir=root / "runs", read_only_workspace=mode == "ro"),
                )
                record = read_record(result.run_dir)
                for key in KEYS:
                    value = record.get(key)
                    samples[mode].setdefault(key, []).append(
                        float(value) if isinstance(value, int | float) else 0.0
                    )
    finally:
        await svc.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3)
    parser.add_argument("--vm", action="store_true", help="real QEMU guests")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crb-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("XDG_STATE_HOME", str(root / "state"))
        samples = asyncio.run(measure(args.n, args.vm, root))
    rows = [
        (f"{mode} {key.removesuffix('_ms')}", summarize(values))
        for mode, by_key in samples.items()
        for key, values in by_key.items()
    ]
    added = [
        b + c for b, c in zip(
            samples["rw"]["workspace_baseline_ms"], samples["rw"]["changes_ms"], strict=True
        )
    ]  # fmt: skip
    rows.append(("added (baseline + changes)", summarize(added)))
    if args.json:
        out: dict[str, Any] = {"host": host_facts(), "vm": args.vm, "rows": dict(rows)}
        emit_json(out)
        return
    kind = "QEMU guests" if args.vm else "agent-process guests"
    print_table(f"change detection through the service, {kind} ({args.n} runs)", rows)
    print(f"host {host_facts()}")


if __name__ == "__main__":
    main()
