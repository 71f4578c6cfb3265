"""The run's upstream DNS client: asks the configured resolvers from inside the run namespace.

:class:`UpstreamClient` sends queries from one unconnected UDP socket
(created in the run namespace, so they leave through the run's veth and its
firewall) and matches replies by id and server; :class:`UpstreamAnswer` is
one reply with its IPv4 answers and their lowest TTL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
from typing import Any

from dnslib import QTYPE, DNSError, DNSRecord

__all__ = ["UpstreamAnswer", "UpstreamClient", "UpstreamFailed"]


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
