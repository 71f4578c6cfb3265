"""Run inputs and results in real guests (QEMU, host-made workspace disk): env, stdin,
workspace changes (baseline on the seeded disk, patch, apply) and artifacts."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cleanroom import paths
from cleanroom.config import QemuConfig, RuntimeConfig
from cleanroom.errors import InvalidRequest
from cleanroom.models import ChangeCounts
from cleanroom.service import LaunchOptions, RunEvent, RunOptions, RunOutput, Service
from cleanroom.service.record import read_record
from cleanroom.service.terminal import Terminal

pytestmark = [pytest.mark.vm, pytest.mark.image]

SECRET = "vm-secret-41d5e0"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "repo"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text("version: 1\n")
    (ws / "keep.txt").write_text("unchanged\n")
    (ws / "edit.txt").write_text("one\n")
    (ws / "gone.txt").write_text("bye\n")
    return ws


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    svc = Service(RuntimeConfig(qemu=QemuConfig(accel="tcg", launch_seconds=120)))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


async def test_env_stdin_changes_and_artifacts_in_a_guest(
    service: Service, workspace: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(workspace), str(copy)], check=True)
    script = (
        'test "$TOKEN" = "$EXPECT" && echo token-ok; cat; '
        "echo two >> edit.txt; rm gone.txt; mkdir -p out; printf '\\377x' > out/r.bin; "
        "ln -s keep.txt link"
    )
    result = await service.exec(
        workspace,
        ["sh", "-c", script],
        RunOptions(
            env={"TOKEN": SECRET, "EXPECT": SECRET}, stdin=b"from stdin\n", artifacts=["out/*.bin"]
        ),
        options=LaunchOptions(run_dir=paths.state_dir() / "test-runs"),
    )
    assert result.stdout == "token-ok\nfrom stdin\n"
    # The host-made disk: the agent took its baseline before the command.
    record = read_record(result.run_dir)
    assert record["workspace"]["method"] == "disk"  # type: ignore[index]
    assert record["workspace_baseline_ms"] is not None
    assert result.changes == ChangeCounts(
        added=3, modified=1, deleted=1, mode_changed=0, skipped=0, complete=True
    )
    assert [a.path for a in result.artifacts] == ["out/r.bin"]
    assert (result.run_dir / "artifacts" / "out" / "r.bin").read_bytes() == b"\xffx"

    patch = await service.run_diff(result.run_id)
    subprocess.run(["git", "apply", "-"], cwd=copy, input=patch, check=True)
    assert (copy / "edit.txt").read_text() == "one\ntwo\n"
    assert not (copy / "gone.txt").exists()
    assert (copy / "link").readlink() == Path("keep.txt")

    applied = await service.apply_changes(result.run_id)
    assert applied.removed == 1
    assert (workspace / "edit.txt").read_text() == "one\ntwo\n"
    assert (workspace / "out" / "r.bin").read_bytes() == b"\xffx"
    for path in result.run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


async def test_a_read_only_workspace_reports_no_changes(
    service: Service, workspace: Path, tmp_path: Path
) -> None:
    result = await service.exec(
        workspace,
        ["sh", "-c", "echo x > /tmp/t; cat keep.txt"],
        RunOptions(artifacts=["keep.txt"]),
        options=LaunchOptions(run_dir=paths.state_dir() / "test-runs", read_only_workspace=True),
    )
    assert result.stdout == "unchanged\n"
    assert result.changes is None
    assert [a.path for a in result.artifacts] == ["keep.txt"]
    with pytest.raises(InvalidRequest):
        await service.run_diff(result.run_id)


async def test_a_terminal_run_in_a_guest(service: Service, workspace: Path, tmp_path: Path) -> None:
    """The command gets a pseudo-terminal of the asked size; typed input reaches it,
    a resize is seen, Ctrl-C interrupts the foreground job."""
    terminal = Terminal(rows=33, cols=91)
    seen: list[bytes] = []
    prompt = asyncio.Event()

    async def sink(event: RunEvent) -> None:
        if isinstance(event, RunOutput):
            seen.append(event.data)
            if b"ready" in b"".join(seen):
                prompt.set()

    script = (
        "stty size; echo ready; read line; echo got:$line; stty size; "
        "sleep 300; echo after-sleep; exit 5"
    )
    run = asyncio.ensure_future(
        service.exec(
            workspace,
            ["sh", "-c", script],
            RunOptions(terminal=terminal),
            options=LaunchOptions(run_dir=paths.state_dir() / "test-runs"),
            on_event=sink,
        )
    )
    await asyncio.wait_for(prompt.wait(), 120)
    await terminal.resize(50, 132)
    await asyncio.sleep(0.5)
    await terminal.feed(b"typed\r")
    for _ in range(100):
        if b"50 132" in b"".join(seen):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)
    await terminal.feed(b"\x03")  # Ctrl-C through the terminal's line discipline
    result = await asyncio.wait_for(run, 60)
    shown = b"".join(seen).decode(errors="replace")
    assert "33 91" in shown
    assert "got:typed" in shown
    assert "50 132" in shown
    # SIGINT reached the foreground process group (sh and its sleep) through the terminal.
    assert "after-sleep" not in shown
    assert (result.exit_code, result.signal) == (130, "SIGINT")
