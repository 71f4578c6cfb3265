"""The run's DNS filter: answers allowed names, refuses the rest.

:class:`DnsFilter` serves UDP and TCP on sockets created inside the run
namespace (bound to the guest link's gateway, port 53). For a name some allow
rule covers it asks the upstream resolvers through :class:`UpstreamClient`
(whose socket also lives in the run namespace, so queries leave through the
run's veth and its firewall), hands the returned IPv4 addresses to the
``learn`` hook (which adds them to the run's allowed set) and only then
replies. Other names get ``REFUSED``; ``AAAA`` and other types for allowed
names get an empty ``NOERROR`` answer (IPv6 is dropped; other record types
would only widen what the guest can learn). Every decision is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

from cleanroom.errors import CleanroomError
from cleanroom.network.audit import AuditLog
from cleanroom.network.egress import NameVerdict, name_verdict
from cleanroom.policy import CompiledPolicy

__all__ = ["DnsFilter", "LearnHook", "UpstreamAnswer", "UpstreamClient", "UpstreamFailed"]

LearnHook = Callable[[tuple[ipaddress.IPv4Address, ...], tuple[int, ...], int], Awaitable[None]]
"""``learn(addresses, ports, ttl_seconds)``: open ``addresses`` on ``ports`` before the reply."""

_TCP_IDLE_S = 10.0
_MAX_TCP_MESSAGE = 65535


class UpstreamFailed(Exception):
    """No upstream resolver gave a usable answer."""


class UpstreamAnswer:
    """An upstream response: its rcode, answer records and the A addresses with the lowest TTL."""

    def __init__(self, record: DNSRecord) -> None:
        self.record = record
        self.rcode: int = record.header.rcode
        self.addresses: tuple[ipaddress.IPv4Address, ...] = tuple(
            dict.fromkeys(
                ipaddress.IPv4Address(str(rr.rdata)) for rr in record.rr if rr.rtype == QTYPE.A
            )
        )
        ttls = [rr.ttl for rr in record.rr if rr.rtype == QTYPE.A]
        self.ttl: int = min(ttls) if ttls else 0


class UpstreamClient(asyncio.DatagramProtocol):
    """Asks the upstream resolvers over UDP from one socket, matching replies by id and server."""

    def __init__(
        self, servers: tuple[str, ...], *, timeout: float = 2.0, attempts: int = 2
    ) -> None:
        self.servers = servers
        self.timeout = timeout
        self.attempts = attempts
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: dict[tuple[int, str], asyncio.Future[DNSRecord]] = {}

    async def start(self, sock: socket.socket) -> None:
        """Serve replies arriving on ``sock`` (an unconnected UDP socket)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            record = DNSRecord.parse(data)
        except DNSError:
            return
        future = self._pending.get((record.header.id, str(addr[0])))
        if future is not None and not future.done() and addr[1] == 53:
            future.set_result(record)

    async def query(self, name: str, qtype: str) -> UpstreamAnswer:
        """Resolve ``name``/``qtype``; raises :class:`UpstreamFailed`."""
        if self._transport is None:
            raise UpstreamFailed("upstream client is not started")
        loop = asyncio.get_running_loop()
        for _attempt in range(self.attempts):
            for server in self.servers:
                qid = secrets.randbelow(65536)
                while (qid, server) in self._pending:
                    qid = secrets.randbelow(65536)
                question = DNSRecord.question(name, qtype)
                question.header.id = qid
                future: asyncio.Future[DNSRecord] = loop.create_future()
                self._pending[(qid, server)] = future
                try:
                    self._transport.sendto(question.pack(), (server, 53))
                    reply = await asyncio.wait_for(future, self.timeout)
                except (TimeoutError, OSError):
                    continue
                finally:
                    del self._pending[(qid, server)]
                if [str(q.qname) for q in reply.questions] == [str(question.q.qname)]:
                    return UpstreamAnswer(reply)
        raise UpstreamFailed(f"no answer for {name} {qtype} from {', '.join(self.servers)}")

    def close(self) -> None:
        """Stop listening (pending queries fail by timeout)."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, owner: DnsFilter) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = await self.owner.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


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
    ) -> None:
        self.policy = policy
        self.upstream = upstream
        self.learn = learn
        self.audit = audit
        self.ttl_floor = ttl_floor
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` as a task owned (and cancelled on close) by the filter."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve(self, udp_sock: socket.socket, tcp_sock: socket.socket) -> None:
        """Start answering on both sockets (created and bound inside the run namespace)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self), sock=udp_sock)
        self._udp = transport
        self._tcp = await asyncio.start_server(self._tcp_client, sock=tcp_sock)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # so close() cancels idle TCP clients too
            self._tasks.add(task)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE_S)
                (length,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(length), _TCP_IDLE_S)
                reply = await self.answer(data)
                if reply is None or len(reply) > _MAX_TCP_MESSAGE:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
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
        try:
            upstream = await self.upstream.query(name, "A")
            if upstream.addresses:
                await self.learn(
                    upstream.addresses, verdict.ports, max(upstream.ttl, self.ttl_floor)
                )
        except (UpstreamFailed, CleanroomError) as exc:
            reply.header.rcode = RCODE.SERVFAIL
            record("servfail", rule=verdict.rule, error=str(exc))
            return bytes(reply.pack())
        reply.header.rcode = upstream.rcode
        for rr in upstream.record.rr:
            reply.add_answer(rr)
        record(
            "allowed",
            [str(a) for a in upstream.addresses],
            ports=list(verdict.ports),
            rule=verdict.rule,
            rcode=RCODE.get(upstream.rcode, str(upstream.rcode)),
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
