"""The CLI's side of pinning, the ceiling and isolation, as real processes against a real
server (the real service; its guests are agent processes reporting ``qemu-tcg``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_run import cli, cli_env

from cleanroom.policy import load_policy


@pytest.fixture
def env(root: Path) -> dict[str, str]:
    return cli_env(root)


def test_exec_and_launch_pin_the_policy(host: str, repo: Path, env: dict[str, str]) -> None:
    actual = load_policy(repo).policy_hash
    base = ("--host", host, "-c", str(repo))
    wrong = cli("exec", *base, "--expect-policy-hash", "0" * 64, "--", "true", env=env)
    assert wrong.returncode == 65
    assert wrong.stderr.decode().startswith("error[policy_conflict]")
    assert actual in wrong.stderr.decode()
    ok = cli("exec", *base, "--expect-policy-hash", actual, "--json", "--", "true", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["isolation"] == "qemu-tcg"
    launched = cli("launch", *base, "--expect-policy-hash", actual, "--json", env=env)
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout)["isolation"] == "qemu-tcg"
    refused = cli("launch", *base, "--expect-policy-hash", "f" * 64, env=env)
    assert refused.returncode == 65


def test_status_shows_the_isolation(host: str, repo: Path, env: dict[str, str]) -> None:
    done = cli("exec", "--host", host, "-c", str(repo), "--json", "--", "true", env=env)
    run_id = json.loads(done.stdout)["run_id"]
    record = json.loads(cli("status", "--host", host, "--run-id", run_id, "--json", env=env).stdout)
    assert record["isolation"] == "qemu-tcg"
    table = cli("status", "--host", host, "--run-id", run_id, env=env).stdout.decode()
    assert "qemu-tcg" in table


def test_doctor_checks_the_host_locally_without_a_server(root: Path, env: dict[str, str]) -> None:
    done = cli("doctor", "--host", f"unix://{root}/none.sock", "--json", env=env)
    assert done.returncode == 1  # the server named does not answer
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["server"]["status"] == "fail"
    assert checks["local"]["status"] == "pass"
    for name in ("host.linux", "host.kvm_device", "dirs.state", "qemu.binary", "qemu.accel"):
        assert name in checks, sorted(checks)
    # Whatever this host's KVM does, the canary has not run here: never a pass for TCG.
    assert checks["qemu.accel"]["status"] == "warn"
