"""``cleanroom policy validate``: in-process and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cleanroom.cli.testing import invoke

VALID = """\
version: 1
sandbox:
  network:
    allow:
      - host: API.Example.Test.
        ports: [443, 443]
        reason: the API
    deny:
      - host: 192.0.2.0/24
"""

INVALID = """\
version: 1
sandbox:
  network:
    default: allow
    allow:
      - host: a.example.test
        ports: ["443"]
"""


def write(directory: Path, text: str, name: str = "cleanroom.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_validate_prints_hash_and_rules(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    result = invoke(["policy", "validate", "-c", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"source: {path.resolve()}" in result.stdout
    assert "policy_hash: " in result.stdout
    assert "allow[0] api.example.test:443  # the API" in result.stdout
    assert "deny[0] 192.0.2.0/24" in result.stdout


def test_validate_json(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    write(tmp_path, "version: 1\n", ".buildkite/cleanroom.yaml")
    result = invoke(["policy", "validate", "-c", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["valid"] is True
    assert body["source"] == str(path.resolve())
    assert len(body["policy_hash"]) == 64
    assert body["policy"]["sandbox"]["network"]["allow"] == [
        {"host": "api.example.test", "ports": [443], "reason": "the API"}
    ]
    assert len(body["warnings"]) == 1
    assert ".buildkite/cleanroom.yaml" in body["warnings"][0]


def test_validate_reports_every_problem(tmp_path: Path) -> None:
    write(tmp_path, INVALID)
    result = invoke(["policy", "validate", "-c", str(tmp_path)])
    assert result.exit_code == 65
    assert "error[policy_invalid]" in result.stderr
    assert "cleanroom.yaml:4:14: sandbox.network.default:" in result.stderr
    assert "cleanroom.yaml:7:17: sandbox.network.allow[0].ports[0]:" in result.stderr


def test_validate_json_error_body(tmp_path: Path) -> None:
    write(tmp_path, INVALID)
    result = invoke(["policy", "validate", "-c", str(tmp_path), "--json"])
    assert result.exit_code == 65
    body = json.loads(result.stdout)
    assert body["error"]["code"] == "policy_invalid"
    assert len(body["error"]["details"]["problems"]) == 2


def test_validate_without_policy(tmp_path: Path) -> None:
    result = invoke(["policy", "validate", "-c", str(tmp_path)])
    assert result.exit_code == 66
    assert "error[policy_not_found]" in result.stderr


def test_validate_defaults_to_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, VALID)
    monkeypatch.chdir(tmp_path)
    result = invoke(["policy", "validate"])
    assert result.exit_code == 0, result.output
    assert "policy_hash: " in result.stdout


def test_validate_as_a_real_process(tmp_path: Path) -> None:
    write(tmp_path, VALID)
    executable = Path(sys.executable).parent / "cleanroom"
    assert executable.exists(), "the console script is installed with the package"
    ok = subprocess.run(
        [str(executable), "policy", "validate", "-c", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["valid"] is True
    write(tmp_path, INVALID)
    bad = subprocess.run(
        [str(executable), "policy", "validate", "-c", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert bad.returncode == 65
    assert "error[policy_invalid]" in bad.stderr
    assert "cleanroom.yaml:7:17:" in bad.stderr
