"""A flooding guest's DNS traffic, run inside a fake guest namespace (never elsewhere).

``python dns_flood.py RESOLVER SECONDS TCP_CLIENTS NAME...``: opens TCP_CLIENTS
connections to RESOLVER:53 and keeps them, and for SECONDS sends A queries for
the NAMEs over UDP as fast as it can. Prints one JSON object: ``sent``,
``replies`` (UDP answers received), ``tcp_open`` (connections still open at
the end: the filter closes those beyond its limit at once).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time


def _query(qid: int, name: str) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


def _still_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except (BlockingIOError, TimeoutError):
        return True  # nothing to read, not closed
    except OSError:
        return False


def main() -> None:
    resolver, seconds, tcp_clients, names = (
        sys.argv[1],
        float(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4:],
    )
    held: list[socket.socket] = []
    for _ in range(tcp_clients):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.connect((resolver, 53))
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        held.append(sock)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    udp.connect((resolver, 53))
    sent = replies = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for i, name in enumerate(names):
            try:
                udp.send(_query((sent + i) & 0xFFFF, name))
                sent += 1
            except BlockingIOError:
                pass
        while True:
            try:
                udp.recv(4096)
                replies += 1
            except (BlockingIOError, ConnectionRefusedError):
                break
    time.sleep(0.5)
    while True:
        try:
            udp.recv(4096)
            replies += 1
        except (BlockingIOError, ConnectionRefusedError):
            break
    tcp_open = sum(1 for sock in held if _still_open(sock))
    sys.stdout.write(json.dumps({"sent": sent, "replies": replies, "tcp_open": tcp_open}) + "\n")
    sys.stdout.flush()
    os._exit(0)  # the held sockets close with the process


if __name__ == "__main__":
    main()
