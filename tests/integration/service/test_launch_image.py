"""Launch decides the user image and machine size: bad input fails the launch.

Through the real client, server and service (guests are agent processes; no
launch here gets as far as a guest). Each refusal has a stable code and says
why in ``details``; nothing is left in the image cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cleanroom.client import Client
from cleanroom.config import ImagesConfig, RuntimeConfig
from cleanroom.errors import CleanroomError
from cleanroom.models import LaunchOptions, SandboxResources
from cleanroom.service import Service
from cleanroom.testing import AgentProcessBackend, agent_service

DIGEST = "sha256:" + "ab" * 32
CLEANROOM = str(Path(sys.executable).parent / "cleanroom")


@pytest.fixture(autouse=True)
def image_cache(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty user-image cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return root / "cache"


@pytest.fixture
def config() -> RuntimeConfig:
    return RuntimeConfig(
        default_backend="qemu",
        images=ImagesConfig(max_vcpus=2, max_memory_mib=2048, max_disk_mib=8192),
    )


@pytest.fixture
def service(backend: AgentProcessBackend, state: Path, config: RuntimeConfig) -> Service:
    return agent_service(backend, config=config)


def _policy(repo: Path, sandbox: str) -> Path:
    (repo / "cleanroom.yaml").write_text(f"version: 1\nsandbox:\n{sandbox}")
    return repo


def _launch_error(host: str, repo: Path, image: str | None = None) -> CleanroomError:
    options = LaunchOptions(image=image) if image is not None else None
    with Client(host) as client, pytest.raises(CleanroomError) as caught:
        client.launch(repo, options=options)
    return caught.value


def _cache_entries(cache: Path) -> list[Path]:
    user = cache / "cleanroom" / "images" / "user"
    return sorted(p for p in user.iterdir() if not p.name.startswith(".")) if user.is_dir() else []


def test_built_in_image_and_default_machine_are_reported(host: str, repo: Path) -> None:
    _policy(repo, "  resources: {vcpus: 2, memory_mib: 1024}\n")
    with Client(host) as client:
        launched = client.launch(repo)
        (info,) = client.list_cleanrooms()
    assert launched.image is None
    assert launched.resources == SandboxResources(vcpus=2, memory_mib=1024, disk_mib=16384)
    assert info.image is None
    assert info.resources == launched.resources


def test_ref_without_digest_is_policy_invalid(host: str, repo: Path, image_cache: Path) -> None:
    _policy(repo, "  image:\n    ref: registry.example.com/tools/node:20\n")
    assert _launch_error(host, repo).code == "policy_invalid"
    (repo / "cleanroom.yaml").write_text("version: 1\n")
    error = _launch_error(host, repo, image="registry.example.com/tools/node:20")
    assert error.code == "policy_invalid"
    assert error.details["ref"] == "registry.example.com/tools/node:20"
    assert "digest" in error.message
    assert _cache_entries(image_cache) == []


def test_unknown_image_is_image_unavailable_with_cause(
    host: str, repo: Path, image_cache: Path
) -> None:
    error = _launch_error(host, repo, image=DIGEST)  # an import that never happened
    assert error.code == "image_unavailable"
    assert error.details["cause"] == "not_found"
    # A registry that does not answer (a closed port on loopback).
    _policy(repo, f"  image:\n    ref: 127.0.0.1:9/test/none@{DIGEST}\n")
    error = _launch_error(host, repo)
    assert error.code == "image_unavailable"
    assert error.details["cause"] == "unreachable", error.details
    assert _cache_entries(image_cache) == []


def test_resources_over_the_maximum_are_policy_conflict(host: str, repo: Path) -> None:
    _policy(repo, "  resources: {vcpus: 3}\n")
    error = _launch_error(host, repo)
    assert error.code == "policy_conflict"
    assert error.details == {"limit": "images.max.vcpus", "requested": 3, "maximum": 2}
    _policy(repo, "  resources: {disk_mib: 9000}\n")
    assert _launch_error(host, repo).details["limit"] == "images.max.disk_mib"


@pytest.mark.parametrize(
    "config",
    [RuntimeConfig(default_backend="qemu", images=ImagesConfig(allow_override=False))],
)
def test_forbidden_override_is_policy_conflict(host: str, repo: Path) -> None:
    error = _launch_error(host, repo, image=DIGEST)
    assert error.code == "policy_conflict"
    assert error.details["limit"] == "images.allow_override"
    with Client(host) as client:
        assert client.launch(repo).image is None  # without an override it launches


def test_cli_exec_image_flag_reaches_the_server(host: str, repo: Path) -> None:
    proc = subprocess.run(
        [CLEANROOM, "exec", "--host", host, "--image", "not-a-ref", "--json", "--", "true"],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert '"policy_invalid"' in proc.stdout + proc.stderr


def test_cli_launch_reports_image_and_resources(host: str, repo: Path) -> None:
    _policy(repo, "  resources: {memory_mib: 512}\n")
    proc = subprocess.run(
        [CLEANROOM, "launch", "--host", host, "--json", "-c", str(repo)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    launched = json.loads(proc.stdout)
    assert launched["image"] is None
    assert launched["resources"]["memory_mib"] == 512
    forbidden = subprocess.run(
        [CLEANROOM, "launch", "--host", host, "--image", "x/y:1", "-c", str(repo)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert forbidden.returncode != 0
    assert "policy_invalid" in forbidden.stderr
