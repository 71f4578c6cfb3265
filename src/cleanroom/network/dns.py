"""The run's DNS filter: answers allowed names, refuses the rest, within fixed limits.

:class:`DnsFilter` serves UDP and TCP on sockets created inside the run
namespace (bound to the guest link's gateway, port 53). For a name some allow
rule covers it asks the upstream resolvers through
:class:`~cleanroom.network.upstream.UpstreamClient`, hands the returned IPv4
addresses that the :class:`~cleanroom.network.guard.EgressGuard` accepts to
the ``learn`` hook (which adds them to the run's allowed set) and only then
replies. Addresses the guard refuses (the host's own, the run networks,
private, CGNAT, loopback, link-local, multicast, reserved) are never learned:
the answer is still returned unchanged, so the guest sees what the name
resolves to, but connections there stay blocked, and the refusal is in the
audit event (``not_learned``). Other names get ``REFUSED``; ``AAAA`` and other
types for allowed names get an empty ``NOERROR`` answer (IPv6 is dropped;
other record types would only widen what the guest can learn).

The filter runs in the server's event loop, so its cost per run is bounded by
:class:`DnsLimits`: concurrent TCP clients (further connections are closed
at once), in-flight UDP queries and a query rate (further datagrams are
dropped unread). Drops are counted (``dropped`` in the summary) and audited
with log-scaled frequency, so a flood cannot grow the audit log either.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

from cleanroom.errors import CleanroomError
from cleanroom.network.audit import AuditLog
from cleanroom.network.egress import NameVerdict, name_verdict
from cleanroom.network.guard import EgressGuard
from cleanroom.network.upstream import UpstreamAnswer, UpstreamClient, UpstreamFailed
from cleanroom.policy import CompiledPolicy

__all__ = [
    "DnsFilter",
    "DnsLimits",
    "LearnHook",
    "UpstreamAnswer",
    "UpstreamClient",
    "UpstreamFailed",
]

LearnHook = Callable[[tuple[ipaddress.IPv4Address, ...], tuple[int, ...], int], Awaitable[int]]
"""``learn(addresses, ports, ttl_seconds)``: open ``addresses`` on ``ports`` before the
reply; returns how many firewall elements it had to leave out (the run's cap)."""

_TCP_IDLE_S = 10.0
_MAX_TCP_MESSAGE = 65535


@dataclass(frozen=True)
class DnsLimits:
    """Per-run bounds on the DNS filter (runtime config ``limits.dns_*``)."""

    tcp_clients: int = 8
    """Concurrent TCP connections; more are closed at once."""
    inflight_queries: int = 32
    """UDP queries being answered at once; more are dropped unread."""
    queries_per_second: int = 100
    """Sustained query rate (UDP and TCP together; bursts up to one second's worth)."""
    audit_bytes: int = 4 << 20
    """Size cap of the run's ``network-events.jsonl``."""


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, owner: DnsFilter) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        owner = self.owner
        if owner.inflight >= owner.limits.inflight_queries:
            owner.drop("inflight_queries")
        elif owner.take_token():
            owner.inflight += 1
            owner.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            reply = await self.owner.answer(data)
            if reply is not None and self.transport is not None:
                self.transport.sendto(reply, addr)
        finally:
            self.owner.inflight -= 1


class DnsFilter:
    """The run's resolver (see the module docstring). ``ttl_floor`` is the minimum
    lifetime, in seconds, of an address learned from an answer."""

    def __init__(
        self,
        policy: CompiledPolicy,
        upstream: UpstreamClient,
        learn: LearnHook,
        audit: AuditLog,
        *,
        ttl_floor: int = 60,
        guard: EgressGuard | None = None,
        limits: DnsLimits | None = None,
    ) -> None:
        self.policy = policy
        self.upstream = upstream
        self.learn = learn
        self.audit = audit
        self.ttl_floor = ttl_floor
        self.guard = guard if guard is not None else EgressGuard()
        self.limits = limits if limits is not None else DnsLimits()
        self.inflight = 0
        self.tcp_clients = 0
        self.dropped: Counter[str] = Counter()
        """Messages or connections refused by a limit, by limit name."""
        self._tokens = float(self.limits.queries_per_second)
        self._refilled = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` as a task owned (and cancelled on close) by the filter."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def take_token(self) -> bool:
        """One query's worth of the rate limit; False (and counted) when exhausted."""
        now = time.monotonic()
        rate = self.limits.queries_per_second
        self._tokens = min(float(rate), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1.0:
            self.drop("queries_per_second")
            return False
        self._tokens -= 1.0
        return True

    def drop(self, limit: str) -> None:
        """Count a message or connection refused by ``limit``; audit the 1st, 2nd, 4th, ..."""
        self.dropped[limit] += 1
        self.audit.dns_dropped += 1
        count = self.dropped[limit]
        if count & (count - 1) == 0:
            self.audit.write("dns_limit", limit=limit, dropped=count)

    async def serve(self, udp_sock: socket.socket, tcp_sock: socket.socket) -> None:
        """Start answering on both sockets (created and bound inside the run namespace)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self), sock=udp_sock)
        self._udp = transport
        self._tcp = await asyncio.start_server(self._tcp_client, sock=tcp_sock)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.tcp_clients >= self.limits.tcp_clients:
            self.drop("tcp_clients")
            writer.transport.abort()
            return
        self.tcp_clients += 1
        task = asyncio.current_task()
        if task is not None:  # so close() cancels idle TCP clients too
            self._tasks.add(task)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE_S)
                (length,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(length), _TCP_IDLE_S)
                if not self.take_token():
                    break
                reply = await self.answer(data)
                if reply is None or len(reply) > _MAX_TCP_MESSAGE:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.tcp_clients -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _verdict(self, name: str) -> NameVerdict:
        try:
            return name_verdict(self.policy, name)
        except CleanroomError:
            # Not a host name the policy language can express (e.g. "_srv" labels).
            return NameVerdict(name, allowed=False, ports=(), rule="invalid name")

    async def answer(self, data: bytes) -> bytes | None:
        """The reply to one query message (None: not a DNS query, ignore it)."""
        try:
            request = DNSRecord.parse(data)
        except DNSError:
            return None
        if request.header.qr:
            return None
        reply = request.reply()
        if request.header.opcode != 0 or len(request.questions) != 1:
            reply.header.rcode = RCODE.NOTIMP if request.header.opcode else RCODE.FORMERR
            return bytes(reply.pack())
        question = request.q
        name = str(question.qname).rstrip(".").lower()
        qtype = QTYPE.get(question.qtype, str(question.qtype))
        verdict = self._verdict(name)

        def record(decision: str, answers: Sequence[str] = (), **extra: object) -> None:
            self.audit.write(
                "dns", name=name, qtype=qtype, decision=decision, answers=list(answers), **extra
            )

        if not verdict.allowed:
            reply.header.rcode = RCODE.REFUSED
            record("refused", rule=verdict.rule)
            return bytes(reply.pack())
        if question.qtype != QTYPE.A:
            record("allowed", rule=verdict.rule, note="only A records are answered")
            return bytes(reply.pack())
        not_learned: dict[str, str] = {}
        left_out = 0
        try:
            upstream = await self.upstream.query(name, "A")
            learnable: list[ipaddress.IPv4Address] = []
            for address in upstream.addresses:
                reason = self.guard.refusal(address)
                if reason is None:
                    learnable.append(address)
                else:
                    not_learned[str(address)] = reason
            if learnable:
                left_out = await self.learn(
                    tuple(learnable), verdict.ports, max(upstream.ttl, self.ttl_floor)
                )
        except (UpstreamFailed, CleanroomError) as exc:
            reply.header.rcode = RCODE.SERVFAIL
            record("servfail", rule=verdict.rule, error=str(exc))
            return bytes(reply.pack())
        reply.header.rcode = upstream.rcode
        for rr in upstream.record.rr:
            reply.add_answer(rr)
        extra: dict[str, object] = {}
        if not_learned:
            extra["not_learned"] = not_learned
        if left_out:
            extra["elements_left_out"] = left_out
        record(
            "allowed",
            [str(a) for a in upstream.addresses],
            ports=list(verdict.ports),
            rule=verdict.rule,
            rcode=RCODE.get(upstream.rcode, str(upstream.rcode)),
            **extra,
        )
        return bytes(reply.pack())

    async def close(self) -> None:
        """Stop serving and cancel in-flight answers (idempotent)."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
