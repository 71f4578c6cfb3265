"""``cleanroom policy validate`` under the runtime config: isolation, maxima, the ceiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleanroom.cli.testing import invoke

POLICY = """\
version: 1
sandbox:
  network:
    allow:
      - host: api.example.test
        ports: [443]
      - host: 10.0.0.0/8
        ports: [443]
  resources: {vcpus: 2}
  isolation: kvm
"""

CONFIG = """\
images:
  max: {vcpus: 8}
policy:
  ceiling:
    hosts:
      - host: "*.example.test"
        ports: ["1-1024"]
      - host: 10.0.0.0/8
        ports: [443]
    max: {vcpus: 4, timeout_seconds: 300}
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg-config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    path = home / "cleanroom" / "config.yaml"
    path.parent.mkdir(parents=True)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "cleanroom.yaml").write_text(POLICY)
    return path


def test_without_a_ceiling(repo: Path, config_file: Path) -> None:
    result = invoke(["policy", "validate", "-c", str(repo)])
    assert result.exit_code == 0, result.output
    assert "isolation required: kvm\n" in result.stdout
    assert "ceiling: none" in result.stdout
    body = json.loads(invoke(["policy", "validate", "-c", str(repo), "--json"]).stdout)
    assert body["ceiling"] is None
    assert body["effective"]["isolation"] == "kvm"
    assert body["effective"]["max"]["vcpus"] == 4  # images.max's default


def test_within_the_ceiling(repo: Path, config_file: Path) -> None:
    config_file.write_text(CONFIG)
    result = invoke(["policy", "validate", "-c", str(repo)])
    assert result.exit_code == 0, result.output
    assert f"ceiling: within policy.ceiling ({config_file})" in result.stdout
    assert "maxima: vcpus 4, memory_mib 4096, disk_mib 16384, timeout_seconds 300" in (
        result.stdout
    )
    body = json.loads(invoke(["policy", "validate", "-c", str(repo), "--json"]).stdout)
    assert body["ceiling"]["within"] is True
    assert body["ceiling"]["excess"] == []
    assert body["ceiling"]["ceiling"]["hosts"][0] == {"host": "*.example.test", "ports": ["1-1024"]}


def test_beyond_the_ceiling_lists_every_excess(repo: Path, config_file: Path) -> None:
    config_file.write_text(
        CONFIG.replace("ports: [443]\n    max", "ports: [80]\n    max").replace(
            "vcpus: 4", "vcpus: 1"
        )
    )
    result = invoke(["policy", "validate", "-c", str(repo)])
    assert result.exit_code == 65
    assert "ceiling: beyond policy.ceiling" in result.stdout
    assert "excess sandbox.network.allow[0]: allow rule 10.0.0.0/8:443" in result.stdout
    assert "excess sandbox.resources.vcpus:" in result.stdout
    assert result.stderr.startswith("error[policy_conflict]")
    as_json = invoke(["policy", "validate", "-c", str(repo), "--json"])
    assert as_json.exit_code == 65
    body = json.loads(as_json.stdout)
    assert body["ceiling"]["within"] is False
    assert [e["field"] for e in body["ceiling"]["excess"]] == [
        "sandbox.network.allow[0]",
        "sandbox.resources.vcpus",
    ]
    assert body["policy_hash"]  # the policy itself is valid and shown


def test_a_broken_runtime_config_is_reported(repo: Path, config_file: Path) -> None:
    config_file.write_text("policy: {ceiling: {hosts: [{host: x.test}]}}\n")
    result = invoke(["policy", "validate", "-c", str(repo)])
    assert result.exit_code == 78
    assert "policy.ceiling.hosts[0].ports" in result.stderr
