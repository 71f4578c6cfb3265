"""Run records and output capture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleanroom.service.output import CAPTURE_LIMIT, OutputCapture
from cleanroom.service.record import RECORD_NAME, TIMING_KEYS, RunRecorder, read_record
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
