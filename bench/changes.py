"""What change detection adds to a run: 100 MiB, 1,000 files, one file changed.

The guest agent runs as a host process (the real agent code, over a
socketpair, as in the agent tests). Measured per repetition:

* ``hash_inline``: the sha256 the agent adds to extraction, timed as the
  same ``update`` calls on the same 64 KiB pieces (``extract_delta``, the
  extraction with hashing minus without, is the noisy cross-check);
* ``record``: the manifest walk after extraction, including its wait for the
  timestamp tick to pass;
* ``changes``: one file changed by a command, then ``collect_changes``
  through the real agent (walk, compare, stream the file, validate and
  spool it on the host);
* ``added`` = the three above: what a run pays for change detection.

Also reported, not added: ``host_manifest`` (hashing the workspace on the
host at copy time, which overlaps the guest's boot) and the full transfer
of the workspace into the agent, for scale.

Usage: ``python bench/changes.py [-n N] [--mib 100] [--files 1000] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report, summarize, with_facts

import cleanroom.agent
from cleanroom.agent.changes import record_manifest
from cleanroom.agent.host import AgentClient
from cleanroom.agent.workspace import extract_tar_stream
from cleanroom.changes import collect_changes, take_manifest


def make_workspace(root: Path, mib: int, files: int) -> Path:
    ws = root / "src"
    size = mib * (1 << 20) // files
    for i in range(files):
        d = ws / f"dir{i // 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:04d}.bin").write_bytes(os.urandom(size))
    return ws


def tar_of(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(root, arcname=".")
    return buf.getvalue()


def _hash_ms(src: Path) -> float:
    """sha256 of every file in 64 KiB updates, as extraction feeds it (files pre-read)."""
    blobs = [p.read_bytes() for p in sorted(src.rglob("*.bin"))]
    started = time.perf_counter()
    for blob in blobs:
        h = hashlib.sha256()
        view = memoryview(blob)
        for off in range(0, len(view), 64 * 1024):
            h.update(view[off : off + 64 * 1024])
        h.hexdigest()
    return (time.perf_counter() - started) * 1000


def _extract_ms(archive: bytes, dest: Path, *, hashes: dict[str, str] | None) -> float:
    if dest.exists():
        shutil.rmtree(dest)
    started = time.perf_counter()
    extract_tar_stream(io.BytesIO(archive), str(dest), hashes=hashes)
    return (time.perf_counter() - started) * 1000


async def _agent(lib: Path, ws: Path) -> tuple[AgentClient, asyncio.subprocess.Process]:
    parent, child = socket.socketpair()
    cmd = [sys.executable, "-S", "-m", "cleanroom.agent.guest", "--channel", "stdio"]
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, "--workspace", str(ws), stdin=child.fileno(), stdout=child.fileno(),
            env={"PYTHONPATH": str(lib), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
    finally:
        child.close()
    reader, writer = await asyncio.open_unix_connection(sock=parent)
    client = AgentClient(reader, writer)
    await client.hello(timeout=30)
    return client, proc


async def _changes_round(
    lib: Path, src: Path, archive: bytes, tmp: Path, i: int
) -> dict[str, float]:
    started = time.perf_counter()
    manifest = take_manifest(src)
    host_manifest_ms = (time.perf_counter() - started) * 1000
    client, proc = await _agent(lib, tmp / f"ws{i}")
    try:
        started = time.perf_counter()
        await client.send_workspace([archive], read_only=False)
        transfer_ms = (time.perf_counter() - started) * 1000

        async def sink(stream: str, data: bytes) -> None:
            pass

        status = await client.exec(
            ["sh", "-c", "printf changed >> dir05/file0500.bin"], cwd=str(tmp / f"ws{i}"),
            on_output=sink,
        )  # fmt: skip
        assert status.exit_code == 0
        started = time.perf_counter()
        cs = await collect_changes(client, tmp / f"spool{i}", manifest)
        changes_ms = (time.perf_counter() - started) * 1000
        assert [(c.path, c.change) for c in cs.changes] == [("dir05/file0500.bin", "modified")]
    finally:
        await client.close()
        await proc.wait()
    shutil.rmtree(tmp / f"ws{i}", ignore_errors=True)
    shutil.rmtree(tmp / f"spool{i}", ignore_errors=True)
    return {"host_manifest": host_manifest_ms, "transfer": transfer_ms, "changes": changes_ms}


def _guest_lib(root: Path) -> Path:
    pkg = root / "cleanroom" / "agent"
    pkg.mkdir(parents=True)
    (root / "cleanroom" / "__init__.py").write_text("")
    for src in Path(cleanroom.agent.__file__).parent.glob("*.py"):
        shutil.copy2(src, pkg / src.name)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    names = ("hash_inline", "record", "changes", "added", "extract_delta")
    samples: dict[str, list[float]] = {k: [] for k in (*names, "host_manifest", "transfer")}
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-changes-") as tmp_name:
        tmp = Path(tmp_name)
        src = make_workspace(tmp, args.mib, args.files)
        archive = tar_of(src)
        lib = _guest_lib(tmp / "lib")
        # Extract into memory where possible: disk writeback noise dwarfs the hashing.
        shm = Path("/dev/shm")  # a private mkdtemp below it
        xroot = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else tmp))
        for i in range(args.n):
            plain = _extract_ms(archive, xroot / "x", hashes=None)
            hashes: dict[str, str] = {}
            hashed = _extract_ms(archive, xroot / "x", hashes=hashes)
            started = time.perf_counter()
            record_manifest(str(xroot / "x"), hashes)
            record = (time.perf_counter() - started) * 1000
            rnd = asyncio.run(_changes_round(lib, src, archive, tmp, i))
            inline = _hash_ms(src)
            samples["extract_delta"].append(hashed - plain)
            samples["hash_inline"].append(inline)
            samples["record"].append(record)
            samples["changes"].append(rnd["changes"])
            samples["added"].append(inline + record + rnd["changes"])
            samples["host_manifest"].append(rnd["host_manifest"])
            samples["transfer"].append(rnd["transfer"])
        shutil.rmtree(xroot, ignore_errors=True)
    stats = {k: summarize(v) for k, v in samples.items()}
    summary = {
        "workspace_mib": args.mib,
        "files": args.files,
        "added_ms": stats["added"]["median"],
        "target_ms": 300,
    }
    out = with_facts(summary, runs=args.n, stats=stats)
    report(
        out,
        as_json=args.json,
        title=(
            f"change detection, {args.mib} MiB in {args.files} files, one changed ({args.n} runs)"
        ),
        rows=list(stats.items()),
        footer=f"\nadded to the run: {out['added_ms']} ms (median; target <= 300 ms)\n"
        f"host {out['host']}",
    )


if __name__ == "__main__":
    main()
