"""End-to-end egress enforcement through a fake guest namespace and a fake internet.

Each test sets up a run network, probes from the fake guest, tears down, and
checks both the outcome and the audit trail (``network-events.jsonl``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from network_fixtures import DNS_ADDR, TEST_PREFIX, Internet, netns_names, probe

from cleanroom.network import NetworkManager, NetworkSummary, RunNetwork, read_events
from cleanroom.policy import CompiledPolicy, compile_policy_text

pytestmark = pytest.mark.network

POLICY = """
version: 1
sandbox:
  network:
    default: deny
    allow:
      - host: allowed.example.test
        ports: [8080]
      - host: "*.wild.example.test"
        ports: [8080]
      - host: changing.example.test
        ports: [8080]
      - host: 198.51.100.7
        ports: [8080]
      - host: 203.0.113.0/27
        ports: [9090]
    deny:
      - host: evil.wild.example.test
      - host: 203.0.113.9
"""


@dataclass(frozen=True)
class Settings:
    uplink_netns: str | None
    resolvers: tuple[str, ...] | None


@dataclass
class Sandbox:
    manager: NetworkManager
    rn: RunNetwork
    guest_ns: str
    run_dir: Path

    def probe(self, *args: str) -> dict[str, Any]:
        return probe(self.guest_ns, *args)

    async def aprobe(self, *args: str) -> dict[str, Any]:
        return await asyncio.to_thread(probe, self.guest_ns, *args)

    async def finish(self) -> tuple[NetworkSummary, list[dict[str, Any]]]:
        summary = await self.manager.teardown(self.rn)
        return summary, read_events(self.run_dir)


def _policy(text: str = POLICY) -> CompiledPolicy:
    return compile_policy_text(text, "cleanroom.yaml")


@pytest.fixture
async def manager(internet: Internet) -> AsyncIterator[NetworkManager]:
    mgr = NetworkManager(Settings(internet.netns, (DNS_ADDR,)), prefix=TEST_PREFIX, ttl_floor=60)
    yield mgr
    leftovers = await mgr.reconcile()
    assert leftovers == []
    assert not [n for n in netns_names() if n.startswith(TEST_PREFIX)]


@pytest.fixture
async def sandbox_factory(
    manager: NetworkManager, guest_ns_factory: Callable[[], str], tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    counter = iter(range(1000))
    made: list[Sandbox] = []

    async def make(policy: CompiledPolicy | None = None) -> Sandbox:
        n = next(counter)
        guest = guest_ns_factory()
        run_dir = tmp_path / f"run{n}"
        run_dir.mkdir()
        rn = await manager.setup(
            f"run-{n:04d}abcdef", policy or _policy(), run_dir, fake_guest_netns=guest
        )
        made.append(Sandbox(manager, rn, guest, run_dir))
        return made[-1]

    yield make
    for sb in made:  # teardown is idempotent: finishes whatever a failed test left
        await manager.teardown(sb.rn)


def _blocked(events: list[dict[str, Any]], dst: str, port: int, proto: str) -> dict[str, Any]:
    hits = [
        e
        for e in events
        if e["event"] == "blocked"
        and e["dst"] == dst
        and e["port"] == port
        and e["protocol"] == proto
    ]
    assert hits, f"no blocked event for {dst}:{port}/{proto} in {events}"
    assert hits[0]["count"] >= 1
    return hits[0]


def _dns(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "dns" and e["name"] == name]


async def test_allowed_host_and_port_reachable_other_port_and_unlisted_blocked(
    sandbox_factory: Callable[..., Any],
) -> None:
    sb: Sandbox = await sandbox_factory()
    dns = await sb.aprobe("dns", sb.rn.dns, "allowed.example.test")
    assert dns["rcode"] == "NOERROR"
    assert dns["answers"] == ["192.0.2.10"]
    ok = await sb.aprobe("tcp", "192.0.2.10", "8080")
    assert ok == {"ok": True, "reply": "tcp:192.0.2.10:8080"}
    other_port = await sb.aprobe("tcp", "192.0.2.10", "8081")
    unlisted = await sb.aprobe("tcp", "192.0.2.30", "8080")
    udp_other = await sb.aprobe("udp", "192.0.2.10", "5000")
    assert not other_port["ok"]
    assert not unlisted["ok"]
    assert not udp_other["ok"]
    summary, events = await sb.finish()
    _blocked(events, "192.0.2.10", 8081, "tcp")
    _blocked(events, "192.0.2.30", 8080, "tcp")
    _blocked(events, "192.0.2.10", 5000, "udp")
    (answer,) = _dns(events, "allowed.example.test")
    assert answer["decision"] == "allowed"
    assert answer["answers"] == ["192.0.2.10"]
    assert "allowed.example.test" in answer["rule"]
    assert all(e["run_id"] == sb.rn.run_id and e["ts"] for e in events)
    assert summary.connections_allowed >= 1
    assert summary.connections_blocked >= 3
    assert summary.dns_allowed == 1


async def test_udp_allowed_port_passes(sandbox_factory: Callable[..., Any]) -> None:
    sb: Sandbox = await sandbox_factory()
    result = await sb.aprobe("udp", "192.0.2.10", "8080")
    assert result == {"ok": True, "reply": "udp:192.0.2.10:8080"}
    summary, events = await sb.finish()
    assert not [e for e in events if e["event"] == "blocked"]
    assert summary.connections_allowed == 1


async def test_wildcard_allows_subdomain_not_apex_and_unknown_names_refused(
    sandbox_factory: Callable[..., Any],
) -> None:
    sb: Sandbox = await sandbox_factory()
    sub = await sb.aprobe("dns", sb.rn.dns, "a.wild.example.test")
    apex = await sb.aprobe("dns", sb.rn.dns, "wild.example.test")
    other = await sb.aprobe("dns", sb.rn.dns, "blocked.example.test", "A", "tcp")
    assert sub["rcode"] == "NOERROR"
    assert sub["answers"] == ["192.0.2.20"]
    assert apex["rcode"] == "REFUSED"
    assert other["rcode"] == "REFUSED"
    assert (await sb.aprobe("tcp", "192.0.2.20", "8080"))["ok"]
    assert not (await sb.aprobe("tcp", "192.0.2.21", "8080"))["ok"]
    _, events = await sb.finish()
    assert _dns(events, "a.wild.example.test")[0]["decision"] == "allowed"
    assert _dns(events, "wild.example.test")[0]["decision"] == "refused"
    assert _dns(events, "blocked.example.test")[0]["decision"] == "refused"
    _blocked(events, "192.0.2.21", 8080, "tcp")


async def test_deny_rule_beats_matching_allow(sandbox_factory: Callable[..., Any]) -> None:
    sb: Sandbox = await sandbox_factory()
    dns = await sb.aprobe("dns", sb.rn.dns, "evil.wild.example.test")
    assert dns["rcode"] == "REFUSED"
    # The denied name's address stays blocked even when dialled directly, and a
    # denied IP inside an allowed CIDR is blocked while its neighbour is not.
    assert not (await sb.aprobe("tcp", "192.0.2.66", "8080"))["ok"]
    assert not (await sb.aprobe("tcp", "203.0.113.9", "9090"))["ok"]
    assert (await sb.aprobe("tcp", "203.0.113.5", "9090"))["ok"]
    _, events = await sb.finish()
    (refusal,) = _dns(events, "evil.wild.example.test")
    assert refusal["decision"] == "refused"
    assert refusal["rule"].startswith("deny[")
    _blocked(events, "192.0.2.66", 8080, "tcp")
    _blocked(events, "203.0.113.9", 9090, "tcp")


async def test_ip_and_cidr_rules_allow_only_those_addresses(
    sandbox_factory: Callable[..., Any],
) -> None:
    sb: Sandbox = await sandbox_factory()
    assert (await sb.aprobe("tcp", "198.51.100.7", "8080"))["ok"]
    assert not (await sb.aprobe("tcp", "198.51.100.8", "8080"))["ok"]
    assert (await sb.aprobe("tcp", "203.0.113.20", "9090"))["ok"]
    assert not (await sb.aprobe("tcp", "203.0.113.100", "9090"))["ok"]
    _, events = await sb.finish()
    _blocked(events, "198.51.100.8", 8080, "tcp")
    _blocked(events, "203.0.113.100", 9090, "tcp")


async def test_direct_dns_to_upstream_blocked(sandbox_factory: Callable[..., Any]) -> None:
    sb: Sandbox = await sandbox_factory()
    udp = await sb.aprobe("dns", DNS_ADDR, "allowed.example.test")
    tcp = await sb.aprobe("dns", DNS_ADDR, "allowed.example.test", "A", "tcp")
    assert not udp["ok"]
    assert not tcp["ok"]
    _, events = await sb.finish()
    _blocked(events, DNS_ADDR, 53, "udp")
    _blocked(events, DNS_ADDR, 53, "tcp")


async def test_metadata_uplink_and_other_runs_unreachable(
    sandbox_factory: Callable[..., Any],
) -> None:
    sb: Sandbox = await sandbox_factory()
    other: Sandbox = await sandbox_factory()
    try:
        assert not (await sb.aprobe("tcp", "169.254.169.254", "8080"))["ok"]
        assert sb.rn.gateway != other.rn.gateway  # two runs, two links
        # The uplink's own address on this run's link, and its test-server address.
        uplink_addr = _uplink_address(sb)
        assert not (await sb.aprobe("tcp", uplink_addr, "8080"))["ok"]
        assert not (await sb.aprobe("tcp", DNS_ADDR, "8080"))["ok"]
        # The other run's guest and gateway.
        assert not (await sb.aprobe("tcp", other.rn.address, "8080"))["ok"]
        assert not (await sb.aprobe("udp", other.rn.gateway, "53"))["ok"]
    finally:
        _, other_events = await other.finish()
    _, events = await sb.finish()
    _blocked(events, "169.254.169.254", 8080, "tcp")
    _blocked(events, uplink_addr, 8080, "tcp")
    _blocked(events, DNS_ADDR, 8080, "tcp")
    _blocked(events, other.rn.address, 8080, "tcp")
    _blocked(events, other.rn.gateway, 53, "udp")
    assert not [e for e in other_events if e["event"] == "blocked"]


def _uplink_address(sb: Sandbox) -> str:
    gateway = sb.rn.gateway.split(".")
    gateway[-1] = str(int(gateway[-1]) + 4)  # slot layout: .1 gateway, .5 uplink end
    return ".".join(gateway)


async def test_ipv6_blocked(sandbox_factory: Callable[..., Any]) -> None:
    sb: Sandbox = await sandbox_factory()
    aaaa = await sb.aprobe("dns", sb.rn.dns, "allowed.example.test", "AAAA")
    assert aaaa["rcode"] == "NOERROR"
    assert aaaa["answers"] == []
    # A guest that configures IPv6 itself still gets nowhere: the run namespace drops it.
    gw_mac = _run_side_mac(sb)
    for args in (
        ["-6", "addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad"],
        ["-6", "neigh", "add", "fe80::1", "lladdr", gw_mac, "dev", "eth0", "nud", "permanent"],
        ["-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"],
    ):
        await asyncio.to_thread(_ipn, sb.guest_ns, *args)
    assert not (await sb.aprobe("udp", "2001:db8::10", "8080"))["ok"]
    _, events = await sb.finish()
    hit = _blocked(events, "2001:db8::10", 8080, "udp")
    assert hit["family"] == "ipv6"


def _ipn(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)


def _run_side_mac(sb: Sandbox) -> str:
    out = subprocess.run(
        ["ip", "-j", "-n", sb.rn.netns, "link", "show", "dev", "gst0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    mac: str = json.loads(out)[0]["address"]
    return mac


async def test_changing_answer_is_followed(
    sandbox_factory: Callable[..., Any], internet: Internet
) -> None:
    sb: Sandbox = await sandbox_factory()
    try:
        first = await sb.aprobe("dns", sb.rn.dns, "changing.example.test")
        assert first["answers"] == ["203.0.113.100"]
        assert (await sb.aprobe("tcp", "203.0.113.100", "8080"))["ok"]
        assert not (await sb.aprobe("tcp", "203.0.113.101", "8080"))["ok"]
        internet.set_answer("changing.example.test", "203.0.113.101")
        second = await sb.aprobe("dns", sb.rn.dns, "changing.example.test")
        assert second["answers"] == ["203.0.113.101"]
        assert (await sb.aprobe("tcp", "203.0.113.101", "8080"))["ok"]
    finally:
        internet.set_answer("changing.example.test", "203.0.113.100")
    _, events = await sb.finish()
    answers = [e["answers"] for e in _dns(events, "changing.example.test")]
    assert answers == [["203.0.113.100"], ["203.0.113.101"]]
    _blocked(events, "203.0.113.101", 8080, "tcp")


async def test_exact_hosts_resolved_at_setup(sandbox_factory: Callable[..., Any]) -> None:
    sb: Sandbox = await sandbox_factory()
    # No query by the guest: the address learned at setup is already open.
    assert (await sb.aprobe("tcp", "192.0.2.10", "8080"))["ok"]
    assert sb.rn.policy_resolution_ms >= 0
    assert sb.rn.network_setup_ms >= sb.rn.policy_resolution_ms
    _, events = await sb.finish()
    resolved = [e for e in events if e["event"] == "resolved" and e["purpose"] == "allow"]
    assert {e["name"] for e in resolved} == {"allowed.example.test", "changing.example.test"}


async def test_teardown_is_idempotent_and_leaves_nothing(
    sandbox_factory: Callable[..., Any], internet: Internet
) -> None:
    sb: Sandbox = await sandbox_factory()
    assert sb.rn.netns in netns_names()
    first, _ = await sb.finish()
    second, _ = await sb.finish()
    assert first == second
    assert sb.rn.netns not in netns_names()
    links = _links(internet.netns)
    assert not [name for name in links if name.startswith("crnv")]


def _links(netns: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-j", "-n", netns, "link", "show"], check=True, capture_output=True, text=True
    ).stdout
    return [e["ifname"] for e in json.loads(out)]


async def test_reconcile_removes_leftovers_after_crash(
    internet: Internet, guest_ns_factory: Callable[[], str], tmp_path: Path
) -> None:
    crashed = NetworkManager(Settings(internet.netns, (DNS_ADDR,)), prefix=TEST_PREFIX)
    rn = await crashed.setup(
        "run-crash0001", _policy(), tmp_path, fake_guest_netns=guest_ns_factory()
    )
    # Simulate a crash: drop the manager without teardown (close its sockets as exit would).
    for live in list(crashed._live.values()):
        await live.close()
    del crashed
    fresh = NetworkManager(Settings(internet.netns, (DNS_ADDR,)), prefix=TEST_PREFIX)
    removed = await fresh.reconcile()
    assert removed == [rn.netns]
    assert not [n for n in netns_names() if n.startswith(TEST_PREFIX)]
    assert not [name for name in _links(internet.netns) if name.startswith("crnv")]
