"""The runtime config's limits, enforced on real runs (real agent processes, no VMM)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from agent_backend import AgentProcessBackend
from no_network import NoNetwork

from cleanroom import paths
from cleanroom.config import LimitsConfig, RuntimeConfig, parse_config_text
from cleanroom.errors import ConfigInvalid, OutputLimitExceeded, RunTimeout, WorkspaceTooLarge
from cleanroom.service import LaunchOptions, RunEvent, RunOptions, RunOutput, Service
from cleanroom.service.output import CAPTURE_LIMIT
from cleanroom.service.pool import WarmPool
from cleanroom.service.record import RECORD_NAME
from cleanroom.service.workspace import scan_workspace

LOG_LIMIT = 3 * CAPTURE_LIMIT


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state directory of this test's own: a service's start repairs and prunes it."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


async def _service(backend: AgentProcessBackend, limits: LimitsConfig) -> Service:
    svc = Service(RuntimeConfig(limits=limits), backends={"qemu": backend}, network=NoNetwork())
    await svc.start()
    return svc


def _only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.name.startswith("run-")]
    return run_dir


async def test_output_past_the_log_limit_kills_the_run(
    backend: AgentProcessBackend, repo: Path
) -> None:
    svc = await _service(backend, LimitsConfig(output_log_bytes=LOG_LIMIT))
    seen = 0

    async def sink(event: RunEvent) -> None:
        nonlocal seen
        if isinstance(event, RunOutput):
            seen += len(event.data)

    try:
        info = await svc.launch(
            repo, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs")
        )
        with pytest.raises(OutputLimitExceeded) as caught:
            await svc.run(info.cleanroom_id, ["sh", "-c", "yes; sleep 60"], on_event=sink)
    finally:
        await svc.close()
    assert caught.value.code == "output_limit"
    assert caught.value.details["stream"] == "stdout"
    run_dir = _only_run_dir(paths.state_dir() / "test-runs")
    # Kept on disk past the in-memory cap, exactly up to the limit; nothing beyond.
    assert (run_dir / "stdout.log").stat().st_size == LOG_LIMIT
    assert seen == LOG_LIMIT
    record = json.loads((run_dir / RECORD_NAME).read_text())
    assert record["error"]["code"] == "output_limit"
    assert (record["status"], record["cleanup"]) == ("error", "done")
    assert backend.guests[-1].destroyed


async def test_output_under_the_limit_is_kept_whole(
    backend: AgentProcessBackend, repo: Path
) -> None:
    svc = await _service(backend, LimitsConfig(output_log_bytes=LOG_LIMIT))
    try:
        info = await svc.launch(
            repo, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs")
        )
        size = 2 * CAPTURE_LIMIT
        result = await svc.run(info.cleanroom_id, ["head", "-c", str(size), "/dev/zero"])
    finally:
        await svc.close()
    assert result.exit_code == 0
    assert result.stdout_truncated
    assert (result.run_dir / "stdout.log").stat().st_size == size


async def test_a_run_without_timeout_gets_the_default(
    backend: AgentProcessBackend, repo: Path
) -> None:
    svc = await _service(backend, LimitsConfig(run_timeout_seconds=0.5))
    try:
        info = await svc.launch(
            repo, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs")
        )
        with pytest.raises(RunTimeout):
            await svc.run(info.cleanroom_id, ["sleep", "30"])
        # A timeout in the request still wins over the default.
        result = await svc.run(info.cleanroom_id, ["sleep", "1"], RunOptions(timeout=10))
    finally:
        await svc.close()
    assert result.exit_code == 0


def test_default_limits() -> None:
    limits = RuntimeConfig().limits
    assert limits.run_timeout_seconds == 3600
    assert limits.console_log_bytes == 8 << 20
    assert limits.output_log_bytes == 256 << 20
    assert limits.max_concurrent_runs == 16


def test_limits_section_is_parsed_strictly() -> None:
    config = parse_config_text(
        "limits:\n  console_log_bytes: 65536\n  output_log_bytes: 1048576\n"
        "  run_timeout_seconds: 90\n  workspace_bytes: 1000\n"
        "  workspace_apparent_bytes: 2000\n  max_concurrent_runs: 2\n",
        "config.yaml",
    )
    assert config.limits == LimitsConfig(
        console_log_bytes=65536,
        output_log_bytes=1 << 20,
        run_timeout_seconds=90,
        workspace_bytes=1000,
        workspace_apparent_bytes=2000,
        max_concurrent_runs=2,
    )
    for bad, where in [
        ("limits: {surprise: 1}\n", "limits.surprise"),
        ("limits: {console_log_bytes: 10}\n", "limits.console_log_bytes"),
        ("limits: {run_timeout_seconds: 0}\n", "limits.run_timeout_seconds"),
        ("limits: {run_timeout_seconds: 100000}\n", "limits.run_timeout_seconds"),
        ("limits: {max_concurrent_runs: 0}\n", "limits.max_concurrent_runs"),
        ("limits: {output_log_bytes: lots}\n", "limits.output_log_bytes"),
    ]:
        with pytest.raises(ConfigInvalid) as caught:
            parse_config_text(bad, "config.yaml")
        assert any(where in p for p in caught.value.details["problems"]), (bad, caught.value)


async def test_workspace_size_caps_allocated_and_apparent(
    backend: AgentProcessBackend, repo: Path
) -> None:
    with (repo / "sparse.bin").open("wb") as fh:  # 64 MiB apparent, 4 KiB allocated
        fh.write(b"x" * 4096)
        fh.truncate(64 << 20)
    (repo / "dense.bin").write_bytes(b"y" * (2 << 20))
    os.link(repo / "dense.bin", repo / "dense-link.bin")  # a hard link counts once
    cases = [
        (LimitsConfig(workspace_bytes=1 << 20), "workspace_bytes"),
        (LimitsConfig(workspace_apparent_bytes=32 << 20), "workspace_apparent_bytes"),
    ]
    for limits, key in cases:
        svc = await _service(backend, limits)
        try:
            info = await svc.launch(repo, options=LaunchOptions(run_dir=paths.state_dir() / key))
            with pytest.raises(WorkspaceTooLarge) as caught:
                await svc.run(info.cleanroom_id, ["true"])
        finally:
            await svc.close()
        assert caught.value.code == "workspace_too_large"
        assert caught.value.details["limit"] == key
        record = json.loads((_only_run_dir(paths.state_dir() / key) / RECORD_NAME).read_text())
        assert record["error"]["code"] == "workspace_too_large"
        assert record["cleanup"] == "done"
    assert backend.guests == []  # refused before any guest was started
    # Within both caps (allocated ~2 MiB + 4 KiB, apparent ~68 MiB): the run goes ahead.
    stats = scan_workspace(repo)
    assert stats.allocated < (3 << 20) < (64 << 20) < stats.bytes
    svc = await _service(
        backend, LimitsConfig(workspace_bytes=3 << 20, workspace_apparent_bytes=80 << 20)
    )
    try:
        info = await svc.launch(repo, options=LaunchOptions(run_dir=paths.state_dir() / "ok"))
        result = await svc.run(info.cleanroom_id, ["stat", "-c", "%s", "sparse.bin"])
    finally:
        await svc.close()
    assert result.stdout == f"{64 << 20}\n"


async def test_console_limit_reaches_pooled_guests(
    backend: AgentProcessBackend, tmp_path: Path
) -> None:
    # (Cold guests get it through the run plan: see test_limits_vm.)
    pool = WarmPool(
        backend, size=1, root=tmp_path / "pool", launch_seconds=30, console_log_bytes=12345
    )
    pool.start()
    try:
        await pool.wait_ready(1, timeout=30)
    finally:
        await pool.close()
    assert backend.guests[0].spec.console_log_bytes == 12345
