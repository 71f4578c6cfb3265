"""Isolation reported and required on real QEMU guests (TCG on hosts without a usable KVM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanroom.config import QemuConfig, RuntimeConfig
from cleanroom.errors import BackendCapabilityMismatch
from cleanroom.service import LaunchOptions, RunOptions, Service

pytestmark = [pytest.mark.vm, pytest.mark.image]


async def test_kvm_required_is_refused_before_booting_and_runs_report_tcg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    repo = tmp_path / "repo"
    repo.mkdir()
    runs = tmp_path / "runs"
    config = RuntimeConfig(qemu=QemuConfig(accel="tcg", launch_seconds=120), run_dir_roots=(runs,))
    svc = Service(config)
    await svc.start()
    try:
        (repo / "cleanroom.yaml").write_text("version: 1\nsandbox:\n  isolation: kvm\n")
        with pytest.raises(BackendCapabilityMismatch) as info:
            await svc.exec(repo, ["true"], backend="qemu", options=LaunchOptions(run_dir=runs))
        assert info.value.details["isolation"] == "qemu-tcg"
        assert info.value.details["required_by"] == ["sandbox.isolation"]
        assert not runs.exists()  # no run directory: nothing was booted
        assert svc.list_cleanrooms() == []

        (repo / "cleanroom.yaml").write_text("version: 1\n")
        result = await svc.exec(
            repo,
            ["true"],
            RunOptions(timeout=120),
            backend="qemu",
            options=LaunchOptions(run_dir=runs),
        )
        assert result.exit_code == 0
        assert result.isolation == "qemu-tcg"
        assert (await svc.run_record(result.run_id))["isolation"] == "qemu-tcg"
    finally:
        await svc.close()
