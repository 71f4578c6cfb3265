"""Service decisions that need no guest: capability checks, ids, bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from no_network import NoNetwork

from cleanroom.backends import Capabilities, Guest, GuestSpec
from cleanroom.config import RuntimeConfig
from cleanroom.doctor import DoctorCheck
from cleanroom.errors import BackendCapabilityMismatch, InvalidRequest, RunNotFound
from cleanroom.service import LaunchOptions, Service

CAPS = Capabilities(
    backend_name="qemu",
    backend_version="test",
    isolation="qemu-tcg",
    network_default_deny=True,
    network_host_port_filtering=True,
    dns_control=True,
    policy_immutability=True,
    audit_event_emission=True,
)


class StubBackend:
    """Publishes fixed capabilities; launching is not part of these tests."""

    name = "qemu"

    def __init__(self, caps: Capabilities) -> None:
        self.caps = caps

    async def prepare(self) -> Capabilities:
        return self.caps

    async def launch(self, spec: GuestSpec) -> Guest:
        raise AssertionError("not launched in unit tests")

    async def doctor(self) -> list[DoctorCheck]:
        return []

    async def close(self) -> None:
        return None


ALLOWING = "version: 1\nsandbox:\n  network:\n    allow:\n      - host: example.test\n"


def _repo(tmp_path: Path, policy: str) -> Path:
    (tmp_path / "cleanroom.yaml").write_text(policy)
    return tmp_path


async def test_backend_without_filtering_fails_closed(tmp_path: Path) -> None:
    caps = dataclasses.replace(CAPS, network_host_port_filtering=False)
    svc = Service(RuntimeConfig(), backends={"qemu": StubBackend(caps)}, network=NoNetwork())
    with pytest.raises(BackendCapabilityMismatch) as caught:
        await svc.launch(_repo(tmp_path, ALLOWING), backend="qemu")
    assert caught.value.details["missing"] == ["network_host_port_filtering"]


async def test_no_egress_enforcement_fails_closed_for_allow_rules(tmp_path: Path) -> None:
    svc = Service(RuntimeConfig(), backends={"qemu": StubBackend(CAPS)}, network=None)
    with pytest.raises(BackendCapabilityMismatch):
        await svc.launch(_repo(tmp_path, ALLOWING), backend="qemu")
    # A policy that allows nothing needs no enforcement: the guest has no NIC.
    info = await svc.launch(_repo(tmp_path, "version: 1\n"), backend="qemu")
    assert info.backend == "qemu"
    assert len(info.policy_hash) == 64


async def test_launch_option_validation(tmp_path: Path) -> None:
    svc = Service(RuntimeConfig(), backends={"qemu": StubBackend(CAPS)}, network=NoNetwork())
    repo = _repo(tmp_path, "version: 1\n")
    for options in (
        LaunchOptions(launch_seconds=0),
        LaunchOptions(launch_seconds=-1),
        LaunchOptions(run_dir=Path("relative")),
    ):
        with pytest.raises(InvalidRequest):
            await svc.launch(repo, backend="qemu", options=options)
    with pytest.raises(RunNotFound):
        await svc.run_record("run-../../etc")
    with pytest.raises(RunNotFound):
        await svc.run_record("run-000000000000")
