"""Policy pinning, the operator's ceiling and isolation, over HTTP against the real service.

The service's guests are agent processes (``AgentProcessBackend``), which report
``qemu-tcg`` isolation, like the emulated guests of this kind of host.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom.client import Client
from cleanroom.config import PolicyConfig, RuntimeConfig, parse_config_text
from cleanroom.errors import BackendCapabilityMismatch, PolicyConflict
from cleanroom.policy import load_policy
from cleanroom.service import Service
from cleanroom.testing import AgentProcessBackend, ServerThread, agent_service

CEILING = """\
policy:
  ceiling:
    hosts:
      - host: "*.example.test"
        ports: [443]
    max: {vcpus: 2, timeout_seconds: 60}
"""


@pytest.fixture
def config() -> RuntimeConfig:
    return RuntimeConfig()


@pytest.fixture
def service(backend: AgentProcessBackend, state: Path, config: RuntimeConfig) -> Service:
    return agent_service(backend, config=config)


@pytest.fixture
def http(server: ServerThread, sock: Path) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, base_url="http://cleanroom", timeout=30) as client:
        yield client


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


def exec_body(repo: Path, **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"cwd": str(repo), "command": ["sh", "-c", "echo ran"]}
    if options:
        body["options"] = options
    return body


# -- pinning -------------------------------------------------------------------------


def test_a_pinned_hash_admits_only_that_policy(
    http: httpx.Client, repo: Path, backend: AgentProcessBackend
) -> None:
    actual = load_policy(repo).policy_hash
    wrong = "0" * 64
    error = error_of(
        http.post(
            "/v1/cleanrooms/launch",
            json={"cwd": str(repo), "options": {"expected_policy_hash": wrong}},
        ),
        409,
        "policy_conflict",
    )
    assert error["details"] == {
        "expected_policy_hash": wrong,
        "policy_hash": actual,
        "policy_source": str(repo / "cleanroom.yaml"),
    }
    error_of(
        http.post("/v1/exec", json=exec_body(repo, expected_policy_hash=wrong)),
        409,
        "policy_conflict",
    )
    assert backend.guests == []  # refused before anything started

    launched = http.post(
        "/v1/cleanrooms/launch",
        json={"cwd": str(repo), "options": {"expected_policy_hash": f"SHA256:{actual.upper()}"}},
    )
    assert launched.status_code == 200, launched.text
    assert launched.json()["policy_hash"] == actual
    ran = http.post("/v1/exec", json=exec_body(repo, expected_policy_hash=actual))
    assert ran.status_code == 200, ran.text
    assert ran.json()["stdout"] == "ran\n"


def test_the_pin_notices_a_changed_policy(http: httpx.Client, repo: Path) -> None:
    reviewed = load_policy(repo).policy_hash
    (repo / "cleanroom.yaml").write_text("version: 1\nsandbox:\n  resources: {vcpus: 1}\n")
    error = error_of(
        http.post("/v1/exec", json=exec_body(repo, expected_policy_hash=reviewed)),
        409,
        "policy_conflict",
    )
    assert error["details"]["policy_hash"] == load_policy(repo).policy_hash != reviewed


# -- the ceiling ---------------------------------------------------------------------


@pytest.mark.parametrize("config", [parse_config_text(CEILING, "config.yaml")])
def test_a_policy_beyond_the_ceiling_is_refused_listing_the_excess(
    http: httpx.Client, repo: Path, backend: AgentProcessBackend
) -> None:
    (repo / "cleanroom.yaml").write_text(
        """\
version: 1
sandbox:
  network:
    allow:
      - host: 0.0.0.0/0
        ports: [443]
      - host: example.test
      - host: api.example.test
        ports: [443]
  resources: {vcpus: 4}
"""
    )
    error = error_of(http.post("/v1/exec", json=exec_body(repo)), 409, "policy_conflict")
    excess = error["details"]["excess"]
    assert [(e["field"], e["requested"], e["limit"]) for e in excess] == [
        ("sandbox.network.allow[0]", "0.0.0.0/0:443", "policy.ceiling.hosts"),
        ("sandbox.network.allow[2]", "example.test:80,443", "policy.ceiling.hosts"),
        ("sandbox.resources.vcpus", 4, "policy.ceiling.max.vcpus"),
    ]
    assert excess[0]["allowed"] == ["*.example.test:443"]
    assert "0.0.0.0/0:443" in error["message"]
    assert backend.guests == []


@pytest.mark.parametrize("config", [parse_config_text(CEILING, "config.yaml")])
def test_a_policy_within_the_ceiling_runs_and_timeouts_are_capped(
    http: httpx.Client, repo: Path
) -> None:
    ran = http.post("/v1/exec", json={**exec_body(repo), "timeout_seconds": 60})
    assert ran.status_code == 200, ran.text
    over = http.post("/v1/exec", json={**exec_body(repo), "timeout_seconds": 61})
    error = error_of(over, 409, "policy_conflict")
    assert error["details"]["excess"][0]["limit"] == "policy.ceiling.max.timeout_seconds"


@pytest.mark.parametrize("config", [parse_config_text(CEILING, "config.yaml")])
def test_the_python_client_raises_the_conflict_with_its_details(
    server: ServerThread, repo: Path
) -> None:
    (repo / "cleanroom.yaml").write_text("version: 1\nsandbox:\n  resources: {vcpus: 3}\n")
    with Client(server.url) as client, pytest.raises(PolicyConflict) as info:
        client.exec(repo, ["true"])
    assert info.value.details["excess"][0]["requested"] == 3


# -- isolation -----------------------------------------------------------------------


def test_responses_carry_the_isolation(http: httpx.Client, repo: Path) -> None:
    launched = http.post("/v1/cleanrooms/launch", json={"cwd": str(repo)}).json()
    assert launched["isolation"] == "qemu-tcg"
    listed = http.get("/v1/cleanrooms").json()["cleanrooms"]
    assert listed[0]["isolation"] == "qemu-tcg"
    ran = http.post(
        "/v1/cleanrooms/run", json={"cleanroom_id": launched["cleanroom_id"], "command": ["true"]}
    ).json()
    assert ran["isolation"] == "qemu-tcg"
    assert http.get(f"/v1/runs/{ran['run_id']}").json()["isolation"] == "qemu-tcg"
    result = http.post("/v1/exec", json=exec_body(repo)).json()
    assert result["isolation"] == "qemu-tcg"


def test_a_policy_requiring_kvm_is_refused_on_an_emulated_backend(
    http: httpx.Client, repo: Path, backend: AgentProcessBackend
) -> None:
    (repo / "cleanroom.yaml").write_text("version: 1\nsandbox:\n  isolation: kvm\n")
    error = error_of(
        http.post("/v1/exec", json=exec_body(repo)), 409, "backend_capability_mismatch"
    )
    assert error["details"] == {
        "required": "kvm",
        "required_by": ["sandbox.isolation"],
        "isolation": "qemu-tcg",
        "backend": "qemu",
    }
    assert backend.guests == []  # nothing booted
    (repo / "cleanroom.yaml").write_text("version: 1\nsandbox:\n  isolation: any\n")
    assert http.post("/v1/exec", json=exec_body(repo)).status_code == 200


@pytest.mark.parametrize("config", [RuntimeConfig(policy=PolicyConfig(isolation="kvm"))])
def test_the_runtime_config_can_require_kvm(
    server: ServerThread, repo: Path, backend: AgentProcessBackend
) -> None:
    with Client(server.url) as client, pytest.raises(BackendCapabilityMismatch) as info:
        client.launch(repo)
    assert info.value.details["required_by"] == ["policy.isolation"]
    assert backend.guests == []


@pytest.mark.parametrize(
    "config",
    [parse_config_text("policy:\n  ceiling:\n    max: {timeout_seconds: 1}\n", "config.yaml")],
)
def test_a_run_without_a_timeout_gets_the_ceilings(http: httpx.Client, repo: Path) -> None:
    ran = http.post("/v1/exec", json={"cwd": str(repo), "command": ["sleep", "30"]})
    error = error_of(ran, 504, "run_timeout")
    assert "within 1.0 s" in error["message"]


@pytest.mark.parametrize(
    "config", [parse_config_text("policy: {ceiling: {images: []}}\n", "c.yaml")]
)
def test_an_image_override_beyond_the_ceiling_is_refused_before_any_pull(
    http: httpx.Client, repo: Path, backend: AgentProcessBackend
) -> None:
    ref = "registry.example.test/app@sha256:" + "e" * 64  # nothing serves it: no pull happens
    error = error_of(http.post("/v1/exec", json=exec_body(repo, image=ref)), 409, "policy_conflict")
    assert [(e["field"], e["requested"]) for e in error["details"]["excess"]] == [
        ("options.image", ref)
    ]
    assert backend.guests == []
