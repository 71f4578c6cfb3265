"""The DNS filter's guard and limits, with an upstream double (one layer under test).

The real resolver, firewall and namespaces are exercised by
tests/integration/network/test_network_egress_guard.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RR, A, DNSRecord

from cleanroom.network import EgressGuard, read_events
from cleanroom.network.audit import EVENTS_FILE, AuditLog
from cleanroom.network.dns import DnsFilter, DnsLimits, _UdpServer
from cleanroom.network.upstream import UpstreamAnswer, UpstreamClient
from cleanroom.policy import compile_policy_text

POLICY = compile_policy_text(
    """
version: 1
sandbox:
  network:
    allow:
      - host: "*.example.test"
        ports: [443]
""",
    "cleanroom.yaml",
)


class Upstream(UpstreamClient):
    def __init__(self, zone: dict[str, list[str]], gate: asyncio.Event | None = None) -> None:
        super().__init__(("192.0.2.53",))
        self.zone = zone
        self.gate = gate
        self.asked = 0

    async def query(self, name: str, qtype: str) -> UpstreamAnswer:
        self.asked += 1
        if self.gate is not None:
            await self.gate.wait()
        reply = DNSRecord.question(name, qtype).reply()
        for address in self.zone.get(name, []):
            reply.add_answer(RR(name, QTYPE.A, rdata=A(address), ttl=30))
        return UpstreamAnswer(reply)


class Learner:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], tuple[int, ...], int]] = []

    async def __call__(
        self, addresses: tuple[ipaddress.IPv4Address, ...], ports: tuple[int, ...], ttl: int
    ) -> int:
        self.calls.append((tuple(str(a) for a in addresses), ports, ttl))
        return 0


def _filter(
    tmp_path: Path, zone: dict[str, list[str]], limits: DnsLimits | None = None, **kw: Any
) -> tuple[DnsFilter, Learner, AuditLog]:
    learner = Learner()
    audit = AuditLog("run-1", tmp_path / EVENTS_FILE)
    guard = EgressGuard.of(
        [ipaddress.IPv4Address("198.51.100.50")], [ipaddress.IPv4Network("10.231.0.0/16")]
    )
    dns = DnsFilter(
        POLICY, Upstream(zone, **kw), learner, audit, guard=guard, limits=limits or DnsLimits()
    )
    return dns, learner, audit


def _ask(name: str) -> bytes:
    return bytes(DNSRecord.question(name, "A").pack())


async def test_guarded_answers_are_returned_but_never_learned(tmp_path: Path) -> None:
    zone = {
        "mixed.example.test": ["10.1.2.3", "198.51.100.7", "100.64.0.1", "172.31.255.255"],
        "host.example.test": ["198.51.100.50", "10.231.0.2"],
        "edge.example.test": ["100.63.255.255", "172.32.0.0", "172.15.255.255"],
    }
    dns, learner, audit = _filter(tmp_path, zone)
    reply = DNSRecord.parse(await dns.answer(_ask("mixed.example.test")) or b"")
    assert sorted(str(rr.rdata) for rr in reply.rr) == sorted(zone["mixed.example.test"])
    await dns.answer(_ask("host.example.test"))
    await dns.answer(_ask("edge.example.test"))
    audit.close()
    assert learner.calls == [
        (("198.51.100.7",), (443,), 60),
        (("100.63.255.255", "172.32.0.0", "172.15.255.255"), (443,), 60),
    ]
    events = {e["name"]: e for e in read_events(tmp_path) if e["event"] == "dns"}
    assert events["mixed.example.test"]["decision"] == "allowed"
    assert events["mixed.example.test"]["not_learned"] == {
        "10.1.2.3": "private",
        "100.64.0.1": "cgnat",
        "172.31.255.255": "private",
    }
    assert events["host.example.test"]["not_learned"] == {
        "198.51.100.50": "host",
        "10.231.0.2": "run-network",
    }
    assert "not_learned" not in events["edge.example.test"]


async def test_query_rate_is_capped_and_drops_are_audited_log_scaled(tmp_path: Path) -> None:
    dns, _, audit = _filter(tmp_path, {}, DnsLimits(queries_per_second=5))
    taken = [dns.take_token() for _ in range(20)]
    assert taken.count(True) == 5
    assert dns.dropped["queries_per_second"] == 15
    assert audit.dns_dropped == 15
    audit.close()
    logged = [e["dropped"] for e in read_events(tmp_path) if e["event"] == "dns_limit"]
    assert logged == [1, 2, 4, 8]
    await asyncio.sleep(0.25)  # the bucket refills at the configured rate
    assert dns.take_token()


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)


async def test_in_flight_udp_queries_are_capped(tmp_path: Path) -> None:
    gate = asyncio.Event()
    dns, _, audit = _filter(
        tmp_path, {"a.example.test": ["198.51.100.7"]}, DnsLimits(inflight_queries=3), gate=gate
    )
    server = _UdpServer(dns)
    transport = _Transport()
    server.transport = transport  # type: ignore[assignment]
    for _ in range(10):
        server.datagram_received(_ask("a.example.test"), ("10.231.0.2", 5353))
    await asyncio.sleep(0.01)
    assert dns.inflight == 3
    assert dns.upstream.asked == 3  # type: ignore[attr-defined]
    assert dns.dropped["inflight_queries"] == 7
    gate.set()
    await asyncio.sleep(0.05)
    assert dns.inflight == 0
    assert len(transport.sent) == 3
    server.datagram_received(_ask("a.example.test"), ("10.231.0.2", 5353))
    await asyncio.sleep(0.05)
    assert len(transport.sent) == 4
    await dns.close()
    audit.close()


def test_audit_log_is_capped_and_still_summarised(tmp_path: Path) -> None:
    audit = AuditLog("run-1", tmp_path / EVENTS_FILE, max_bytes=2000)
    for i in range(200):
        audit.write("dns", name=f"n{i}.example.test", decision="refused", answers=[])
    audit.dns_dropped = 7
    audit.summarise()
    audit.close()
    size = (tmp_path / EVENTS_FILE).stat().st_size
    assert size <= 2000 + 400
    events = read_events(tmp_path)
    assert events[-2]["event"] == "truncated"
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["dns_refused"] == 200
    assert summary["dns_dropped"] == 7
    assert summary["events_dropped"] == 200 - (len(events) - 2)
    assert audit.written == size
