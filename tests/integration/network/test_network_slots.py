"""Two-phase run networks: a reserved slot drops everything; activation opens it
for exactly one run's policy; teardown and reconcile remove both kinds."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from network_fixtures import DNS_ADDR, TEST_PREFIX, Internet, netns_names, nft_ruleset, probe

from cleanroom.errors import NetworkSetupFailed
from cleanroom.network import NetworkManager, read_events
from cleanroom.policy import compile_policy_text

pytestmark = pytest.mark.network

POLICY = """
version: 1
sandbox:
  network:
    default: deny
    allow:
      - host: allowed.example.test
        ports: [8080]
"""


@dataclass(frozen=True)
class Settings:
    uplink_netns: str | None
    resolvers: tuple[str, ...] | None


@pytest.fixture
async def manager(internet: Internet) -> AsyncIterator[NetworkManager]:
    mgr = NetworkManager(Settings(internet.netns, (DNS_ADDR,)), prefix=TEST_PREFIX)
    yield mgr
    leftovers = await mgr.reconcile()
    assert leftovers == []
    assert not [n for n in netns_names() if n.startswith(TEST_PREFIX)]


def _links(netns: str) -> str:
    return subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show"], check=True, capture_output=True, text=True
    ).stdout


async def test_reserved_slot_drops_everything_until_activated(
    manager: NetworkManager, guest_ns_factory: Callable[[], str], tmp_path: Path
) -> None:
    guest = guest_ns_factory()
    slot = await manager.reserve("pool-0123456789ab", fake_guest_netns=guest)
    try:
        assert slot.netns in netns_names()
        rules = nft_ruleset(slot.netns)
        assert rules.count("policy drop;") == 4
        assert "accept" not in rules
        # Nothing passes: not the allowed host, not the resolver, not the gateway.
        assert not (await asyncio.to_thread(probe, guest, "tcp", "192.0.2.10", "8080"))["ok"]
        gateway = str(slot.link.gateway)
        dns = await asyncio.to_thread(probe, guest, "dns", gateway, "allowed.example.test")
        assert not dns["ok"]

        rn = await manager.activate(
            slot, "run-feedbeef0001", compile_policy_text(POLICY, "cleanroom.yaml"), tmp_path
        )
        assert rn.netns == slot.netns
        assert rn.attachment == slot.attachment
        assert rn.mac == slot.mac
        assert rn.network_setup_ms >= 0
        allowed = await asyncio.to_thread(probe, guest, "tcp", "192.0.2.10", "8080")
        assert allowed["ok"], allowed
        other = await asyncio.to_thread(probe, guest, "tcp", "192.0.2.10", "8081")
        assert not other["ok"]
        with pytest.raises(NetworkSetupFailed):  # one run per slot
            await manager.activate(
                slot, "run-feedbeef0002", compile_policy_text(POLICY, "x"), tmp_path
            )
        summary = await manager.teardown(rn)
        assert summary.connections_allowed >= 1
        assert summary.connections_blocked >= 1
        assert any(e["event"] == "blocked" and e["port"] == 8081 for e in read_events(tmp_path))
        # Releasing the slot afterwards (as the pool might) is harmless.
        assert await manager.teardown(slot) == summary
    finally:
        await manager.teardown(slot)
    assert slot.netns not in netns_names()


async def test_teardown_of_a_never_activated_slot(
    manager: NetworkManager, internet: Internet
) -> None:
    slot = await manager.reserve("pool-aaaabbbbcccc")
    assert slot.netns in netns_names()
    summary = await manager.teardown(slot)
    assert summary.events_path == ""
    assert slot.netns not in netns_names()
    assert slot.link.uplink_veth + "@" not in _links(internet.netns)
    with pytest.raises(NetworkSetupFailed):  # a released slot cannot be activated
        await manager.activate(slot, "run-x1", compile_policy_text(POLICY, "x"), Path("/"))


async def test_reconcile_removes_reserved_and_active_leftovers(
    internet: Internet, tmp_path: Path
) -> None:
    crashed = NetworkManager(Settings(internet.netns, (DNS_ADDR,)), prefix=TEST_PREFIX)
    reserved = await crashed.reserve("pool-111122223333")
    active = await crashed.setup(
        "run-444455556666", compile_policy_text(POLICY, "cleanroom.yaml"), tmp_path
    )
    for live in list(crashed._live.values()):  # a crash: only the process's sockets go
        await live.close()
    del crashed
    fresh = NetworkManager(Settings(internet.netns, (DNS_ADDR,)), prefix=TEST_PREFIX)
    removed = await fresh.reconcile()
    assert sorted(removed) == sorted([reserved.netns, active.netns])
    assert not [n for n in netns_names() if n.startswith(TEST_PREFIX)]
