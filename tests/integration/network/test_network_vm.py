"""Egress conformance inside a real guest: the service, QEMU, the TAP, the run's
namespace, its nftables table and its DNS filter, against the fake internet.

All probes of one policy run in one guest (boots are slow under emulation);
the results come back as JSON lines on stdout.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from network_fixtures import DNS_ADDR, PROBE, TEST_PREFIX, Internet, netns_names, nft_ruleset

from cleanroom import paths
from cleanroom.backends.qemu import QemuConfig
from cleanroom.config import NetworkConfig, PoolConfig, RuntimeConfig
from cleanroom.network import read_events
from cleanroom.service import LaunchOptions, Service

pytestmark = [pytest.mark.vm, pytest.mark.image, pytest.mark.network]

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
      - host: 203.0.113.0/27
        ports: [9090]
      - host: 198.51.100.7
        ports: [8080]
    deny:
      - host: evil.wild.example.test
      - host: 203.0.113.9
"""

# Runs in the guest: every probe, one JSON object per line, keyed by a label.
CHECKS = r"""
import json, socket, sys
sys.path.insert(0, "/workspace")
import probe

def resolver():
    for line in open("/etc/resolv.conf"):
        if line.startswith("nameserver"):
            return line.split()[1]

def emit(label, result):
    print(json.dumps({"label": label, **result}), flush=True)

def resolve(name):
    try:
        infos = socket.getaddrinfo(name, 8080, socket.AF_INET)
        return {"ok": True, "addrs": sorted({a[4][0] for a in infos})}
    except OSError as exc:
        return {"ok": False, "error": str(exc)}

ns = resolver()
emit("resolver", {"ok": ns is not None, "addr": ns})
emit("getaddrinfo_allowed", resolve("allowed.example.test"))
emit("allowed_port", probe.tcp_probe("192.0.2.10", 8080))
emit("allowed_host_other_port", probe.tcp_probe("192.0.2.10", 8081))
emit("udp_other_port", probe.udp_probe("192.0.2.10", 5000))
emit("unlisted_host", probe.tcp_probe("192.0.2.30", 8080))
emit("dns_unlisted", probe.dns_query(ns, "blocked.example.test"))
emit("dns_wild_sub", probe.dns_query(ns, "a.wild.example.test"))
emit("wild_sub_connect", probe.tcp_probe("192.0.2.20", 8080))
emit("dns_wild_apex", probe.dns_query(ns, "wild.example.test"))
emit("dns_denied", probe.dns_query(ns, "evil.wild.example.test"))
emit("denied_direct", probe.tcp_probe("192.0.2.66", 8080))
emit("cidr_allowed", probe.tcp_probe("203.0.113.5", 9090))
emit("cidr_denied_ip", probe.tcp_probe("203.0.113.9", 9090))
emit("ip_rule", probe.tcp_probe("198.51.100.7", 8080))
emit("ip_rule_neighbour", probe.tcp_probe("198.51.100.8", 8080))
emit("direct_upstream_dns", probe.dns_query("192.0.2.53", "allowed.example.test"))
emit("metadata", probe.tcp_probe("169.254.169.254", 80))
emit("ipv6", probe.tcp_probe("2001:db8::10", 8080))
"""


@pytest.fixture
async def service(internet: Internet) -> AsyncIterator[Service]:
    config = RuntimeConfig(
        qemu=QemuConfig(accel="tcg", launch_seconds=120),
        network=NetworkConfig(uplink_netns=internet.netns, resolvers=(DNS_ADDR,)),
    )
    svc = Service(config)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


def _workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "repo"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text(POLICY)
    shutil.copy(PROBE, ws / "probe.py")
    (ws / "checks.py").write_text(CHECKS)
    return ws


def _blocked(events: list[dict[str, Any]], dst: str, port: int, proto: str) -> None:
    hits = [
        e
        for e in events
        if e["event"] == "blocked"
        and e["dst"] == dst
        and e["port"] == port
        and e["protocol"] == proto
    ]
    assert hits, f"no blocked event for {dst}:{port}/{proto}"
    assert hits[0]["count"] >= 1


async def test_policy_enforced_in_a_real_guest(service: Service, tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    result = await service.exec(
        ws,
        ["python3", "/workspace/checks.py"],
        options=LaunchOptions(run_dir=paths.state_dir() / "test-runs"),
    )
    assert result.exit_code == 0, result.stderr
    got = {r["label"]: r for r in map(json.loads, result.stdout.splitlines())}

    assert got["resolver"]["ok"]
    assert got["getaddrinfo_allowed"] == {
        "label": "getaddrinfo_allowed",
        "ok": True,
        "addrs": ["192.0.2.10"],
    }
    assert got["allowed_port"]["ok"]
    assert got["allowed_port"]["reply"] == "tcp:192.0.2.10:8080"
    assert got["wild_sub_connect"]["ok"]
    assert got["cidr_allowed"]["ok"]
    assert got["ip_rule"]["ok"]
    for label in (
        "allowed_host_other_port",
        "udp_other_port",
        "unlisted_host",
        "denied_direct",
        "cidr_denied_ip",
        "ip_rule_neighbour",
        "direct_upstream_dns",
        "metadata",
        "ipv6",
    ):
        assert not got[label]["ok"], label
    assert got["dns_wild_sub"]["answers"] == ["192.0.2.20"]
    for label in ("dns_unlisted", "dns_wild_apex", "dns_denied"):
        assert got[label]["rcode"] == "REFUSED", label

    record = await service.run_record(result.run_id)  # waits for the network's teardown
    events = read_events(result.run_dir)
    assert all(e["run_id"] == result.run_id for e in events)
    _blocked(events, "192.0.2.10", 8081, "tcp")
    _blocked(events, "192.0.2.10", 5000, "udp")
    _blocked(events, "192.0.2.30", 8080, "tcp")
    _blocked(events, "203.0.113.9", 9090, "tcp")
    _blocked(events, "192.0.2.53", 53, "udp")
    _blocked(events, "169.254.169.254", 80, "tcp")
    refused = {e["name"] for e in events if e["event"] == "dns" and e["decision"] == "refused"}
    assert {"blocked.example.test", "wild.example.test", "evil.wild.example.test"} <= refused

    assert record["network"]["blocked"] >= 6
    assert record["network"]["allowed"] >= 1
    assert isinstance(record["network_setup_ms"], float)
    assert isinstance(record["network_cleanup_ms"], float)
    assert isinstance(record["policy_resolution_ms"], float)
    # The run's namespace, TAP and table are gone with it.
    assert not [n for n in netns_names() if n.startswith(TEST_PREFIX)]


async def test_policy_without_allow_rules_gives_no_nic(service: Service, tmp_path: Path) -> None:
    ws = tmp_path / "repo"
    ws.mkdir()
    (ws / "cleanroom.yaml").write_text("version: 1\n")
    result = await service.exec(ws, ["sh", "-c", "ls /sys/class/net"])
    assert result.exit_code == 0
    assert result.stdout.split() == ["lo"]
    assert (await service.run_record(result.run_id))["network"]["mode"] == "none"


def _assert_drop_all(netns: str) -> None:
    """The namespace's only table drops every packet (a reserved, unclaimed slot)."""
    rules = nft_ruleset(netns)
    assert rules.count("table ") == 1, rules
    assert rules.count("policy drop;") == 4, rules
    assert "accept" not in rules, rules


async def test_pooled_guest_serves_a_networked_run(internet: Internet, tmp_path: Path) -> None:
    config = RuntimeConfig(
        qemu=QemuConfig(accel="tcg", launch_seconds=120),
        network=NetworkConfig(uplink_netns=internet.netns, resolvers=(DNS_ADDR,)),
        pool=PoolConfig(size=1),
    )
    svc = Service(config)
    await svc.start()
    try:
        pool = svc.pool("qemu")
        assert pool is not None
        await pool.wait_ready(1)
        # The idle pooled guest's NIC sits behind a drop-everything table.
        idle = [n for n in netns_names() if n.startswith(TEST_PREFIX)]
        assert len(idle) == 1
        _assert_drop_all(idle[0])

        ws = _workspace(tmp_path)
        result = await svc.exec(
            ws,
            ["python3", "/workspace/checks.py"],
            options=LaunchOptions(run_dir=paths.state_dir() / "test-r"),
        )
        assert result.exit_code == 0, result.stderr
        got = {r["label"]: r for r in map(json.loads, result.stdout.splitlines())}
        record = await svc.run_record(result.run_id)  # also waits for the run's teardown
        assert record["pool"] == "hit"
        assert record["network"]["mode"] == "filtered"
        assert isinstance(record["network_setup_ms"], float)
        assert isinstance(record["policy_resolution_ms"], float)

        assert got["allowed_port"]["reply"] == "tcp:192.0.2.10:8080"
        assert got["cidr_allowed"]["ok"]
        for label in ("allowed_host_other_port", "unlisted_host", "metadata", "ipv6"):
            assert not got[label]["ok"], label
        assert got["dns_unlisted"]["rcode"] == "REFUSED"
        events = read_events(result.run_dir)
        assert all(e["run_id"] == result.run_id for e in events)
        _blocked(events, "192.0.2.10", 8081, "tcp")
        _blocked(events, "192.0.2.30", 8080, "tcp")
        _blocked(events, "169.254.169.254", 80, "tcp")
        refused = {e["name"] for e in events if e["event"] == "dns" and e["decision"] == "refused"}
        assert "blocked.example.test" in refused
        # The run's namespace went with its guest; the refilled guest's slot drops all.
        assert idle[0] not in netns_names()
        await pool.wait_ready(1)
        refilled = [n for n in netns_names() if n.startswith(TEST_PREFIX)]
        assert len(refilled) == 1
        _assert_drop_all(refilled[0])
    finally:
        await svc.close()
    assert not [n for n in netns_names() if n.startswith(TEST_PREFIX)]
