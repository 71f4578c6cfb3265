"""Every way a run can end releases everything, and the record holds the code the
caller saw (real agent processes, no VMM)."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import pytest
from agent_backend import AgentProcessBackend

from cleanroom import paths
from cleanroom.agent import AgentClient
from cleanroom.errors import GuestAgentFailed, RunCancelled, RunTimeout
from cleanroom.service import LaunchOptions, RunEvent, RunOptions, RunOutput, Service
from cleanroom.service import greet as greet_module
from cleanroom.service.record import RECORD_NAME


def _record(run_dir: Path) -> dict[str, object]:
    value: dict[str, object] = json.loads((run_dir / RECORD_NAME).read_text())
    return value


async def test_agent_that_stops_answering_is_run_timeout(
    service: Service, backend: AgentProcessBackend, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host waits this long past the command's timeout for the agent's answer.
    monkeypatch.setattr(greet_module, "AgentClient", functools.partial(AgentClient, exec_grace=0.5))
    info = await service.launch(
        repo, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs")
    )
    with pytest.raises(RunTimeout) as caught:
        # The agent (the command's parent) is stopped: it can neither kill nor report.
        await service.run(
            info.cleanroom_id, ["sh", "-c", "kill -STOP $PPID; sleep 2"], RunOptions(timeout=0.3)
        )
    assert caught.value.code == "run_timeout"
    record = _record(_only_run_dir(info.run_dir_root))
    assert record["status"] == "timeout"
    assert record["error"] == {"code": "run_timeout", "message": caught.value.message}
    assert record["cleanup"] == "done"
    assert backend.guests[-1].destroyed


async def test_agent_that_dies_is_guest_agent_failed(
    service: Service, backend: AgentProcessBackend, repo: Path
) -> None:
    info = await service.launch(
        repo, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs")
    )
    with pytest.raises(GuestAgentFailed) as caught:
        await service.run(info.cleanroom_id, ["sh", "-c", "kill -KILL $PPID; sleep 2"])
    assert "lost the guest during the run" in caught.value.message
    record = _record(_only_run_dir(info.run_dir_root))
    assert (record["status"], record["cleanup"]) == ("error", "done")
    assert record["error"] == {"code": "guest_agent_failed", "message": caught.value.message}
    assert backend.guests[-1].destroyed


async def test_unexpected_exception_still_releases_everything(
    service: Service, backend: AgentProcessBackend, repo: Path
) -> None:
    async def sink(event: RunEvent) -> None:
        if isinstance(event, RunOutput):
            raise RecursionError("maximum recursion depth exceeded")

    info = await service.launch(
        repo, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs")
    )
    with pytest.raises(RecursionError):
        await service.run(info.cleanroom_id, ["echo", "hello"], on_event=sink)
    guest = backend.guests[-1]
    assert guest.destroyed
    record = _record(_only_run_dir(info.run_dir_root))
    assert (record["status"], record["cleanup"]) == ("error", "done")
    assert record["error"] == {
        "code": "internal_error",
        "message": "RecursionError('maximum recursion depth exceeded')",
    }
    assert isinstance(record["guest_teardown_ms"], float)


async def test_terminate_mid_command_cancels_and_releases(
    service: Service, backend: AgentProcessBackend, repo: Path
) -> None:
    started = asyncio.Event()

    async def sink(event: RunEvent) -> None:
        if isinstance(event, RunOutput):
            started.set()

    info = await service.launch(
        repo, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs")
    )
    run = asyncio.ensure_future(
        service.run(info.cleanroom_id, ["sh", "-c", "echo go; sleep 30"], on_event=sink)
    )
    await asyncio.wait_for(started.wait(), 20)
    await service.terminate(info.cleanroom_id)
    with pytest.raises(RunCancelled):
        await run
    assert backend.guests[-1].destroyed
    record = _record(_only_run_dir(info.run_dir_root))
    assert (record["status"], record["cleanup"]) == ("cancelled", "done")
    assert record["error"] == {"code": "run_cancelled", "message": "the run was cancelled"}


async def test_cleanup_failure_of_a_failed_run_is_recorded_not_raised(
    service: Service, backend: AgentProcessBackend, repo: Path
) -> None:
    backend.destroy_error = OSError("disk busy")
    info = await service.launch(
        repo, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs")
    )
    with pytest.raises(GuestAgentFailed) as caught:
        await service.run(info.cleanroom_id, ["sh", "-c", "kill -KILL $PPID"])
    record = _record(_only_run_dir(info.run_dir_root))
    assert record["error"] == {"code": "guest_agent_failed", "message": caught.value.message}
    assert record["cleanup"] == "failed"
    assert record["cleanup_error"] == {"code": "internal_error", "message": "OSError('disk busy')"}


def _only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.name.startswith("run-")]
    return run_dir
