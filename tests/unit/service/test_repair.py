"""Crash repair and retention of run directories: by the owner lock, never by guesswork."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_process import server_argv

from cleanroom.client import Client
from cleanroom.config import LimitsConfig, RuntimeConfig
from cleanroom.service.record import RECORD_NAME
from cleanroom.service.repair import (
    LOCK_NAME,
    AutoPrune,
    Retention,
    hold_run,
    prune_runs,
    repair_runs,
)
from cleanroom.testing import AgentProcessBackend, agent_service

DISKS = ("rootfs.qcow2", "workspace.ext4", "scratch.ext4", "workspace-seed")


def _run_dir(root: Path, name: str, record: dict[str, object] | None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    for disk in DISKS:
        if disk == "workspace-seed":
            (run_dir / disk).mkdir()
            (run_dir / disk / "file").write_text("copy of the repo")
        else:
            with (run_dir / disk).open("wb") as fh:
                fh.truncate(1 << 30)
    (run_dir / "stdout.log").write_text("partial output\n")
    if record is not None:
        (run_dir / RECORD_NAME).write_text(json.dumps(record))
    return run_dir


def _record(run_dir: Path) -> dict[str, object]:
    value: dict[str, object] = json.loads((run_dir / RECORD_NAME).read_text())
    return value


async def test_repair_by_owner_lock(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    crashed = _run_dir(root, "run-000000000001", None)  # died before any record
    (crashed / LOCK_NAME).write_text("")  # its lock file stayed, unheld
    answered = _run_dir(
        root,
        "run-000000000002",
        {"run_id": "run-000000000002", "status": "exited", "exit_code": 0, "cleanup": "pending"},
    )
    live = _run_dir(root, "run-000000000003", None)
    hold = hold_run(live)  # a live owner (this process, another open file)
    finished = _run_dir(
        root,
        "run-000000000004",
        {"run_id": "run-000000000004", "status": "exited", "cleanup": "done"},
    )
    try:
        assert repair_runs(root) == ["run-000000000001", "run-000000000002"]
        record = _record(crashed)
        assert record["run_id"] == "run-000000000001"
        assert (record["status"], record["cleanup"]) == ("interrupted", "done")
        assert record["error"] == {
            "code": "internal_error",
            "message": "the server stopped before the run ended",
        }
        assert set(record) >= {"started_at", "ended_at", "artifacts", "exit_code", "command"}
        assert (_record(answered)["status"], _record(answered)["cleanup"]) == ("exited", "done")
        for run_dir in (crashed, answered):
            assert sorted(p.name for p in run_dir.iterdir()) == [RECORD_NAME, "stdout.log"]
        for run_dir in (live, finished):  # untouched
            assert all((run_dir / disk).exists() for disk in DISKS)
        assert not (live / RECORD_NAME).exists()
        assert repair_runs(root) == []  # idempotent
    finally:
        await hold.release()
    assert not (live / LOCK_NAME).exists()
    # No record and no lock file: no owner ever locked it here (a server without
    # run locks made it), so whether its owner lives is unknowable: left alone.
    assert repair_runs(root) == []
    assert all((live / disk).exists() for disk in DISKS)
    (live / LOCK_NAME).write_text("")  # a lock file nobody holds: its owner died
    assert repair_runs(root) == ["run-000000000003"]


def _finished(root: Path, name: str, age_days: float, size: int, now: float) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "stdout.log").write_bytes(b"x" * size)
    record = run_dir / RECORD_NAME
    record.write_text(json.dumps({"run_id": name, "status": "exited", "cleanup": "done"}))
    stamp = now - age_days * 86400
    os.utime(record, (stamp, stamp))
    return run_dir


async def test_prune_by_age_count_and_bytes(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    now = time.time()
    for i, age in enumerate([40, 20, 10, 5, 1]):
        _finished(root, f"run-00000000000{i}", age, 1 << 20, now)
    pending = root / "run-00000000000p"
    pending.mkdir()
    (pending / RECORD_NAME).write_text(json.dumps({"status": "exited", "cleanup": "pending"}))
    os.utime(pending / RECORD_NAME, (0, 0))
    locked = _finished(root, "run-00000000000l", 100, 10, now)
    hold = hold_run(locked)
    try:
        # Age: the 40-day-old one (and the locked 100-day-old one is spared).
        assert prune_runs(root, Retention(max_age_seconds=30 * 86400), now=now) == [
            "run-000000000000"
        ]
        # Count: 3 of the 5 left (locked, 20, 10, 5, 1 days): the oldest two go,
        # except the locked one, whose owner is alive.
        assert prune_runs(root, Retention(max_count=3), now=now) == ["run-000000000001"]
        left = sorted(p.name for p in root.iterdir())
        assert "run-00000000000l" in left
        assert "run-00000000000p" in left
        # Bytes: oldest first until the rest fit 1.5 MiB.
        prune_runs(root, Retention(max_bytes=(3 << 20) // 2), now=now)
        left = sorted(p.name for p in root.iterdir())
        assert left == ["run-000000000004", "run-00000000000l", "run-00000000000p"]
    finally:
        await hold.release()


async def test_a_running_server_prunes_when_runs_finish_at_most_once_per_interval(
    tmp_path: Path,
) -> None:
    root = tmp_path / "runs"
    now = time.time()
    for i in range(4):
        _finished(root, f"run-00000000000{i}", 4 - i, 10, now)
    auto = AutoPrune(root, Retention(max_count=2), interval=0.0)
    auto.poke()
    await auto.close()
    assert sorted(p.name for p in root.iterdir()) == ["run-000000000002", "run-000000000003"]
    # Within the interval, a poke does nothing.
    _finished(root, "run-000000000009", 0, 10, now)
    slow = AutoPrune(root, Retention(max_count=2), interval=3600.0)
    slow.poke()
    await slow.close()
    assert len(list(root.iterdir())) == 3


def test_cli_runs_prune(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    now = time.time()
    for i in range(3):
        _finished(root, f"run-00000000000{i}", 3 - i, 100, now)
    crashed = _run_dir(root, "run-00000000000c", None)  # a crashed one
    (crashed / LOCK_NAME).write_text("")
    cli = str(Path(sys.executable).with_name("cleanroom"))
    out = subprocess.run(
        [cli, "runs", "prune", "--root", str(root), "--max-count", "1", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")},
    )
    report = json.loads(out.stdout)
    assert report["repaired"] == ["run-00000000000c"]
    # The repaired one is now finished and newest: it and nothing else stays.
    assert sorted(report["pruned"]) == ["run-000000000000", "run-000000000001", "run-000000000002"]
    assert [p.name for p in root.iterdir()] == ["run-00000000000c"]


def test_server_killed_mid_run_is_repaired_at_next_start(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "s.sock"
    state = tmp_path / "state"
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cleanroom.yaml").write_text("version: 1\n")
    proc = subprocess.Popen(server_argv(f"unix://{sock}", state), stderr=subprocess.DEVNULL)
    agents: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with Client(f"unix://{sock}") as client:
            events = client.exec_stream(repo, ["sh", "-c", "echo $PPID; sleep 60"])
            next(events)  # started
            for event in events:
                data = getattr(event, "data", b"")
                if data:
                    agents.append(int(data.decode().strip()))  # the agent process
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in agents:  # the dead server's guests (agent processes) go too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    runs = state / "cleanroom" / "runs"
    (run_dir,) = list(runs.iterdir())
    assert not (run_dir / RECORD_NAME).exists()  # the server died mid-run

    async def restart() -> None:
        svc = agent_service(
            AgentProcessBackend(),
            config=RuntimeConfig(default_backend="qemu", limits=LimitsConfig()),
        )
        await svc.start()
        await svc.close()

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(state))
        asyncio.run(restart())
    record = _record(run_dir)
    assert (record["status"], record["cleanup"]) == ("interrupted", "done")
    assert record["run_id"] == run_dir.name
