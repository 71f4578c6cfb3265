"""The service end to end on real guests (QEMU; TCG on hosts where KVM does not boot).

Every run boots a fresh guest (that is the product's guarantee), so each test
packs as many checks into one command as it can.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cleanroom import paths
from cleanroom.config import QemuConfig, RuntimeConfig
from cleanroom.errors import (
    CleanroomNotFound,
    GuestAgentFailed,
    InvalidRequest,
    PolicyNotFound,
    RunCancelled,
    RuntimeLaunchFailed,
    RunTimeout,
)
from cleanroom.service import LaunchOptions, RunEvent, RunOptions, RunOutput, RunStarted, Service
from cleanroom.service.record import RECORD_NAME, TIMING_KEYS

pytestmark = [pytest.mark.vm, pytest.mark.image]

POLICY = "version: 1\nsandbox:\n  network:\n    default: deny\n"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "repo"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text(POLICY)
    (ws / "data.txt").write_text("hello from the host\n")
    (ws / "bin").mkdir()
    (ws / "bin" / "tool.sh").write_text("#!/bin/sh\necho tool ran\n")
    (ws / "bin" / "tool.sh").chmod(0o755)
    (ws / "link").symlink_to("data.txt")
    return ws


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    # A private state directory: run records, pool guests and stagings of this test only.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    # Cold boots throughout (restored runs are tested in test_snapshot_vm.py), so the
    # only QEMU children are the runs' own guests.
    config = RuntimeConfig(qemu=QemuConfig(accel="tcg", launch_seconds=120, snapshots=False))
    svc = Service(config)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


def _vmm_children() -> set[int]:
    """PIDs of QEMU processes that are children of this test process."""
    me = os.getpid()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and comm.startswith("qemu"):
            found.add(int(entry.name))
    return found


async def test_exit_codes_output_workspace_and_record(
    service: Service, workspace: Path, tmp_path: Path
) -> None:
    runs = paths.state_dir() / "test-runs"
    info = await service.launch(workspace, options=LaunchOptions(run_dir=runs))
    assert info.backend == "qemu"
    assert info.policy_source == workspace / "cleanroom.yaml"
    script = (
        "cat /workspace/data.txt; readlink /workspace/link; /workspace/bin/tool.sh; "
        "echo to-stderr >&2; printf '\\000\\377\\001' > /workspace/bin.out; "
        "echo scribble > /etc/cleanroom-was-here; test -w /workspace && echo writable; exit 7"
    )
    events: list[RunEvent] = []

    async def sink(ev: RunEvent) -> None:
        events.append(ev)

    first = await service.run(info.cleanroom_id, ["sh", "-c", script], on_event=sink)
    assert first.exit_code == 7
    assert first.stdout.splitlines() == ["hello from the host", "data.txt", "tool ran", "writable"]
    assert first.stderr == "to-stderr\n"
    assert isinstance(events[0], RunStarted)
    assert any(isinstance(e, RunOutput) and e.stream == "stderr" for e in events)

    # A second run gets a fresh guest: the rootfs write and the workspace write are gone,
    # and exit statuses 0 and 1 come back as they are.
    second = await service.run(
        info.cleanroom_id,
        ["sh", "-c", "test -e /etc/cleanroom-was-here && echo leaked; ls /workspace; exit 1"],
    )
    assert second.exit_code == 1
    assert "leaked" not in second.stdout
    assert "bin.out" not in second.stdout
    assert "data.txt" in second.stdout
    ok = await service.run(info.cleanroom_id, ["true"])
    assert ok.exit_code == 0

    record = await service.run_record(first.run_id)
    assert record == json.loads((first.run_dir / RECORD_NAME).read_text())
    assert record["cleanup"] == "done"
    for run in (second, ok):
        assert (await service.run_record(run.run_id))["cleanup"] == "done"
    assert record["exit_code"] == 7
    assert record["backend"] == "qemu"
    assert record["isolation"] in ("qemu-tcg", "qemu-kvm")
    assert record["policy_hash"] == info.policy_hash
    assert record["workspace"]["files"] == 3
    for key in ("rootfs_prepare_ms", "vmm_start_ms", "vm_ready_ms", "command_ms", "total_ms"):
        assert isinstance(record[key], float), key
    assert set(TIMING_KEYS) <= set(record)
    assert first.plan_path.exists()
    assert (first.run_dir / "stdout.log").read_text().startswith("hello from the host")
    assert (first.run_dir / "console.log").exists()
    # Nothing of the guests is left: no VMM child, no rootfs copy, no archive.
    assert not _vmm_children()
    for run_dir in (first.run_dir, second.run_dir):
        leftovers = [p.name for p in run_dir.iterdir() if p.stat().st_size > 50 * 1024 * 1024]
        assert leftovers == []
        assert not (run_dir / "workspace.tar").exists()
    await service.terminate(info.cleanroom_id)
    await service.terminate(info.cleanroom_id)  # idempotent
    with pytest.raises(CleanroomNotFound):
        await service.run(info.cleanroom_id, ["true"])


async def test_signal_binary_output_and_read_only(service: Service, workspace: Path) -> None:
    info = await service.launch(workspace, options=LaunchOptions(read_only_workspace=True))
    script = (
        "printf '\\000\\377\\376binary'; "
        "if echo x > /workspace/new 2>/tmp/err; then echo WROTE >&2; else cat /tmp/err >&2; fi; "
        "kill -TERM $$"
    )
    result = await service.run(info.cleanroom_id, ["sh", "-c", script])
    assert result.exit_code == 128 + signal.SIGTERM
    assert result.signal == "SIGTERM"
    assert (result.run_dir / "stdout.log").read_bytes() == b"\x00\xff\xfebinary"
    assert "Read-only file system" in result.stderr
    assert "WROTE" not in result.stderr
    await service.terminate(info.cleanroom_id)


async def test_parallel_runs_in_two_contexts(service: Service, workspace: Path) -> None:
    a = await service.launch(workspace)
    b = await service.launch(workspace)
    results = await asyncio.gather(
        service.run(a.cleanroom_id, ["sh", "-c", "echo a; exit 3"]),
        service.run(b.cleanroom_id, ["sh", "-c", "echo b; exit 4"]),
    )
    assert [(r.stdout, r.exit_code) for r in results] == [("a\n", 3), ("b\n", 4)]
    assert len({r.run_id for r in results}) == 2
    await service.terminate(a.cleanroom_id)
    await service.terminate(b.cleanroom_id)


async def test_launch_timeout_is_runtime_launch_failed(service: Service, workspace: Path) -> None:
    info = await service.launch(workspace, options=LaunchOptions(launch_seconds=0.5))
    with pytest.raises(RuntimeLaunchFailed) as caught:
        await service.run(info.cleanroom_id, ["true"])
    run_dir = Path(caught.value.details["run_dir"])
    record = json.loads((run_dir / RECORD_NAME).read_text())
    assert record["status"] == "error"
    assert record["error"]["code"] == "runtime_launch_failed"
    assert not _vmm_children()
    await service.terminate(info.cleanroom_id)


async def test_vmm_killed_mid_run_is_guest_agent_failed(service: Service, workspace: Path) -> None:
    info = await service.launch(workspace)
    started = asyncio.Event()

    async def sink(ev: RunEvent) -> None:
        if isinstance(ev, RunOutput) and b"sleeping" in ev.data:
            started.set()

    task = asyncio.create_task(
        service.run(info.cleanroom_id, ["sh", "-c", "echo sleeping; sleep 300"], on_event=sink)
    )
    await asyncio.wait_for(started.wait(), 120)
    (pid,) = _vmm_children()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(GuestAgentFailed) as caught:
        await task
    assert caught.value.code == "guest_agent_failed"
    run_dir = Path(caught.value.details["run_dir"])
    assert json.loads((run_dir / RECORD_NAME).read_text())["error"]["code"] == "guest_agent_failed"
    assert not _vmm_children()
    assert not [p for p in run_dir.iterdir() if p.suffix in (".sock", ".ext4", ".qcow2", ".img")]
    await service.terminate(info.cleanroom_id)


async def test_terminate_cancels_running_run(service: Service, workspace: Path) -> None:
    info = await service.launch(workspace)
    started = asyncio.Event()

    async def sink(ev: RunEvent) -> None:
        if isinstance(ev, RunOutput):
            started.set()

    task = asyncio.create_task(
        service.run(info.cleanroom_id, ["sh", "-c", "echo go; sleep 300"], on_event=sink)
    )
    await asyncio.wait_for(started.wait(), 120)
    await service.terminate(info.cleanroom_id)
    with pytest.raises(RunCancelled):
        await task
    assert not _vmm_children()


async def test_bad_input_errors(service: Service, workspace: Path, tmp_path: Path) -> None:
    with pytest.raises(PolicyNotFound):
        await service.launch(tmp_path)
    with pytest.raises(InvalidRequest):
        await service.launch(Path("relative/path"))
    with pytest.raises(InvalidRequest):
        await service.launch(workspace, backend="nonsense")
    info = await service.launch(workspace)
    with pytest.raises(InvalidRequest):
        await service.run(info.cleanroom_id, [])
    with pytest.raises(CleanroomNotFound):
        await service.run("cr-doesnotexist", ["true"])
    with pytest.raises(CleanroomNotFound):
        await service.terminate("cr-doesnotexist")
    await service.terminate(info.cleanroom_id)


async def test_large_workspace_is_copied_on_a_host_made_disk(
    service: Service, workspace: Path
) -> None:
    blob = os.urandom(1 << 20) * 48  # 48 MiB: more than the root filesystem has free
    (workspace / "blob.bin").write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    result = await service.exec(
        workspace, ["sh", "-c", "sha256sum /workspace/blob.bin; ls -a /workspace"]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split()[0] == digest
    assert "lost+found" not in result.stdout
    record = await service.run_record(result.run_id)
    assert record["workspace"]["method"] == "disk"
    assert record["workspace"]["bytes"] >= 48 << 20
    assert isinstance(record["workspace_disk_ms"], float)


async def test_special_files_are_skipped_and_reported(service: Service, workspace: Path) -> None:
    os.mkfifo(workspace / "a-fifo")
    result = await service.exec(
        workspace, ["sh", "-c", "ls /workspace"], options=LaunchOptions(read_only_workspace=True)
    )
    assert result.exit_code == 0
    assert "a-fifo" not in result.stdout.split()
    assert "data.txt" in result.stdout.split()
    workspace_info = (await service.run_record(result.run_id))["workspace"]
    assert (
        workspace_info["method"] == "disk"
    )  # from the staged copy, which leaves special files out
    assert workspace_info["skipped"] == ["a-fifo"]


async def test_timeout_kills_the_command_group(service: Service, workspace: Path) -> None:
    started = time.monotonic()
    with pytest.raises(RunTimeout) as caught:
        await service.exec(
            workspace, ["sh", "-c", "sleep 300 & sleep 300; echo never"], RunOptions(timeout=3)
        )
    assert time.monotonic() - started < 120
    run_dir = Path(caught.value.details["run_dir"])
    record = json.loads((run_dir / RECORD_NAME).read_text())
    assert record["status"] == "timeout"
    assert record["error"]["code"] == "run_timeout"
    assert "never" not in (run_dir / "stdout.log").read_text()
    assert not _vmm_children()
