"""Test "internet" servers, run inside the test uplink namespace (never elsewhere).

``python inet_servers.py ZONE_FILE ADDRESS...``: TCP servers on 0.0.0.0 ports 8080/8081/9090
that send ``tcp:<local addr>:<port>`` and close; UDP echo servers on 8080/5000
of each ADDRESS that reply ``udp:<addr>:<port>``; a DNS server on 192.0.2.53:53 (UDP and
TCP) answering A queries from ZONE_FILE (JSON name -> address, re-read on every
query so tests can change answers) with TTL 1, NXDOMAIN otherwise.
"""

from __future__ import annotations

import json
import socketserver
import struct
import sys
import threading
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

DNS_ADDR = "192.0.2.53"


class _Tcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        host, port = self.request.getsockname()
        self.request.sendall(f"tcp:{host}:{port}".encode())


class _Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        _, sock = self.request
        host, port = self.request[1].getsockname()
        sock.sendto(f"udp:{host}:{port}".encode(), self.client_address)


def _dns_reply(data: bytes, zone_file: Path) -> bytes:
    request = DNSRecord.parse(data)
    reply = request.reply()
    name = str(request.q.qname).rstrip(".").lower()
    zone = json.loads(zone_file.read_text())
    if name not in zone:
        reply.header.rcode = RCODE.NXDOMAIN
    elif request.q.qtype == QTYPE.A:
        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(zone[name]), ttl=1))
    return bytes(reply.pack())


def main() -> None:
    zone_file = Path(sys.argv[1])
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    servers: list[socketserver.BaseServer] = []
    for port in (8080, 8081, 9090):
        servers.append(socketserver.ThreadingTCPServer(("0.0.0.0", port), _Tcp))
    # UDP replies must come from the address that was asked (one socket per address).
    for address in sys.argv[2:]:
        for port in (8080, 5000):
            servers.append(socketserver.ThreadingUDPServer((address, port), _Udp))

    class DnsUdp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(_dns_reply(data, zone_file), self.client_address)

    class DnsTcp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            (length,) = struct.unpack("!H", self.rfile.read(2))
            reply = _dns_reply(self.rfile.read(length), zone_file)
            self.wfile.write(struct.pack("!H", len(reply)) + reply)

    servers.append(socketserver.ThreadingUDPServer((DNS_ADDR, 53), DnsUdp))
    servers.append(socketserver.ThreadingTCPServer((DNS_ADDR, 53), DnsTcp))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()  # serve until the test closes our stdin (or kills us)


if __name__ == "__main__":
    main()
