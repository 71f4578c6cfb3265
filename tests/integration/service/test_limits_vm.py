"""Limits on real guests (QEMU under TCG here): a console flood stays within its cap,
and QEMU boots and runs under its seccomp sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleanroom import paths
from cleanroom.backends.console import truncation_marker
from cleanroom.config import LimitsConfig, QemuConfig, RuntimeConfig
from cleanroom.service import LaunchOptions, RunOptions, Service

pytestmark = [pytest.mark.vm, pytest.mark.image]

CONSOLE_LIMIT = 256 * 1024
FLOOD = 64 << 20


async def test_console_flood_is_capped_and_qemu_is_sandboxed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A state directory of its own: a service's start repairs and prunes it.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cleanroom.yaml").write_text("version: 1\n")
    config = RuntimeConfig(
        qemu=QemuConfig(accel="tcg", launch_seconds=120),
        limits=LimitsConfig(console_log_bytes=CONSOLE_LIMIT),
    )
    svc = Service(config)
    await svc.start()
    try:
        result = await svc.exec(
            repo,
            ["sh", "-c", f"head -c {FLOOD} /dev/zero > /dev/hvc0 && echo flooded"],
            RunOptions(timeout=300),
            options=LaunchOptions(run_dir=paths.state_dir() / "test-runs"),
        )
    finally:
        await svc.close()
    assert (result.exit_code, result.stdout) == (0, "flooded\n")
    console = (result.run_dir / "console.log").read_bytes()
    # The boot messages plus the flood's start, cut at the limit: the host disk
    # saw at most the limit although the guest wrote FLOOD bytes.
    assert len(console) == CONSOLE_LIMIT + len(truncation_marker(CONSOLE_LIMIT))
    assert console.endswith(truncation_marker(CONSOLE_LIMIT))
    plan = json.loads(result.plan_path.read_text())
    argv = plan["argv"]
    assert argv[argv.index("-sandbox") + 1].startswith("on,obsolete=deny,elevateprivileges=deny")
    assert any("console (socketpair" in v for v in plan["inherited_fds"].values())
