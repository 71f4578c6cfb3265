"""Run records and output capture."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cleanroom.errors import CleanroomError
from cleanroom.service.output import CAPTURE_LIMIT, OutputCapture
from cleanroom.service.record import (
    RECORD_NAME,
    TIMING_KEYS,
    RunRecorder,
    WorkspaceFacts,
    read_record,
)
from cleanroom.service.types import RunEvent, RunOutput


def test_record_has_every_key_and_is_written_atomically(tmp_path: Path) -> None:
    rec = RunRecorder(
        run_id="run-1",
        cleanroom_id="cr-1",
        backend="qemu",
        policy_hash="ab" * 32,
        command=["true"],
        run_dir=tmp_path,
    )
    rec.timing("vm_ready_ms", 12.345)
    data = rec.finish(status="exited", exit_code=0)
    on_disk = json.loads((tmp_path / RECORD_NAME).read_text())
    assert on_disk == data == read_record(tmp_path)
    for key in TIMING_KEYS:
        assert key in on_disk
    assert on_disk["vm_ready_ms"] == 12.3
    assert on_disk["total_ms"] is not None
    assert on_disk["exit_code"] == 0
    assert not list(tmp_path.glob("*.tmp"))


def test_record_rejects_unknown_timing(tmp_path: Path) -> None:
    rec = RunRecorder(
        run_id="r", cleanroom_id="c", backend="b", policy_hash="h", command=[], run_dir=tmp_path
    )
    with pytest.raises(KeyError):
        rec.timing("made_up_ms", 1)


async def test_capture_bounds_memory_and_keeps_logs(tmp_path: Path) -> None:
    events: list[RunEvent] = []

    async def sink(ev: RunEvent) -> None:
        events.append(ev)

    cap = OutputCapture(tmp_path, sink)
    chunk = b"a" * (256 * 1024)
    for _ in range(6):  # 1.5 MiB
        await cap.write("stdout", chunk)
    await cap.write("stderr", b"\xff\xfe oops")
    cap.close()
    assert len(cap.text("stdout")) == CAPTURE_LIMIT
    assert cap.truncated("stdout")
    assert not cap.truncated("stderr")
    assert cap.text("stderr").endswith(" oops")
    assert (tmp_path / "stdout.log").stat().st_size == 6 * len(chunk)
    assert (tmp_path / "stderr.log").read_bytes() == b"\xff\xfe oops"
    assert len(events) == 7
    assert all(isinstance(e, RunOutput) for e in events)


def _recorder(run_dir: Path) -> RunRecorder:
    return RunRecorder(
        run_id="r", cleanroom_id="c", backend="b", policy_hash="h", command=[], run_dir=run_dir
    )


def test_timed_records_a_finished_step_only(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    with rec.timed("configure"):
        time.sleep(0.02)
    with pytest.raises(RuntimeError), rec.timed("command"):
        raise RuntimeError("the step failed")
    with pytest.raises(KeyError):
        rec.timed("made_up").__enter__()
    data = rec.snapshot()
    configure_ms = data["configure_ms"]
    assert isinstance(configure_ms, float)
    assert configure_ms >= 20
    assert data["command_ms"] is None


def test_record_facts_land_under_the_documented_keys(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    rec.add_artifact("plan", "qemu-argv.json")
    with pytest.raises(KeyError):
        rec.add_artifact("core_dump", "core")
    rec.set_guest(isolation="qemu-tcg", agent_version="1", kernel="6.1")
    rec.set_pool("hit", boot_ms=1234.56, idle_ms=7.89, passes=5)
    rec.set_workspace(
        WorkspaceFacts(
            method="stream",
            files=2,
            bytes=10,
            archive_bytes=3072,
            skipped=("fifo",),
            extracted_files=2,
            refused=0,
            read_only=False,
        )
    )
    rec.set_no_network()
    data = rec.finish(status="error", error=CleanroomError("boom"))
    on_disk = read_record(tmp_path)
    assert on_disk == data
    assert on_disk["artifacts"] == {
        "stdout": "stdout.log",
        "stderr": "stderr.log",
        "console": "console.log",
        "plan": "qemu-argv.json",
    }
    assert (on_disk["isolation"], on_disk["guest"]) == (
        "qemu-tcg",
        {"agent_version": "1", "kernel": "6.1"},
    )
    assert (on_disk["pool"], on_disk["pool_guest"]) == (
        "hit",
        {
            "boot_ms": 1234.6,
            "idle_ms": 7.9,
            "start": "cold",
            "start_fallback": None,
            "self_test_passes": 5,
        },
    )
    assert on_disk["workspace"] == {
        "method": "stream",
        "files": 2,
        "bytes": 10,
        "archive_bytes": 3072,
        "skipped": ["fifo"],
        "extracted_files": 2,
        "refused": 0,
        "read_only": False,
    }
    assert on_disk["network"] == {"mode": "none", "allowed": 0, "blocked": 0}
    assert on_disk["error"] == {"code": "internal_error", "message": "boom"}
    rec.cleaned_up(CleanroomError("disk busy"))
    again = read_record(tmp_path)
    assert (again["cleanup"], again["cleanup_error"]) == (
        "failed",
        {"code": "internal_error", "message": "disk busy"},
    )
