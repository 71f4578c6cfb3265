"""Egress probes: a stdlib-only script to run inside a guest (or a stand-in namespace).

Run as ``python3 probe.py MODE ARGS...``; prints one JSON object and exits 0
whether or not the probe succeeded (``ok`` says). Modes:

- ``tcp HOST PORT``: connect, read what the server sends first (``reply``);
- ``udp HOST PORT``: send ``probe``, wait for any reply;
- ``dns SERVER NAME [QTYPE] [tcp]``: one query; ``rcode`` and IPv4 ``answers``.

The file imports nothing outside the standard library so the service can copy
it into a workspace (or pass it to ``python3 -c``) to check a real guest.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import sys

__all__ = ["dns_query", "main", "tcp_probe", "udp_probe"]

_QTYPES = {"A": 1, "AAAA": 28, "TXT": 16}
_TIMEOUT = 3.0


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def tcp_probe(host: str, port: int) -> dict[str, object]:
    """Connect to ``host:port`` and read up to 200 bytes."""
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            sock.settimeout(_TIMEOUT)
            sock.connect((host, port))
            data = sock.recv(200)
    except OSError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "reply": data.decode(errors="replace")}


def udp_probe(host: str, port: int) -> dict[str, object]:
    """Send one datagram to ``host:port`` and wait for a reply."""
    try:
        with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
            sock.settimeout(_TIMEOUT)
            sock.connect((host, port))
            sock.send(b"probe")
            data = sock.recv(200)
    except OSError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "reply": data.decode(errors="replace")}


def _encode_query(name: str, qtype: int) -> tuple[int, bytes]:
    qid = secrets.randbelow(65536)
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".") if p)
    return qid, header + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def _skip_name(msg: bytes, offset: int) -> int:
    while True:
        length = msg[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1
        if length == 0:
            return offset
        offset += length


def _decode_answers(msg: bytes) -> tuple[int, list[str]]:
    _, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", msg[:12])
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(msg, offset) + 4
    answers: list[str] = []
    for _ in range(ancount):
        offset = _skip_name(msg, offset)
        rtype, _, _, rdlength = struct.unpack("!HHIH", msg[offset : offset + 10])
        offset += 10
        if rtype == 1 and rdlength == 4:
            answers.append(socket.inet_ntoa(msg[offset : offset + 4]))
        offset += rdlength
    return flags & 0x000F, answers


_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def dns_query(
    server: str, name: str, qtype: str = "A", transport: str = "udp"
) -> dict[str, object]:
    """Ask ``server`` (port 53) for ``name``; ``ok`` means a reply came back at all."""
    qid, query = _encode_query(name, _QTYPES[qtype])
    try:
        if transport == "tcp":
            with socket.create_connection((server, 53), timeout=_TIMEOUT) as sock:
                sock.sendall(struct.pack("!H", len(query)) + query)
                head = sock.recv(2, socket.MSG_WAITALL)
                (length,) = struct.unpack("!H", head)
                msg = sock.recv(length, socket.MSG_WAITALL)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_TIMEOUT)
                sock.connect((server, 53))
                sock.send(query)
                msg = sock.recv(4096)
    except (OSError, struct.error) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if len(msg) < 12 or struct.unpack("!H", msg[:2])[0] != qid:
        return {"ok": False, "error": "malformed reply"}
    rcode, answers = _decode_answers(msg)
    return {"ok": True, "rcode": _RCODES.get(rcode, str(rcode)), "answers": answers}


def main(argv: list[str]) -> int:
    """Entry point: run one probe and print its JSON result."""
    mode, *args = argv
    if mode == "tcp":
        result = tcp_probe(args[0], int(args[1]))
    elif mode == "udp":
        result = udp_probe(args[0], int(args[1]))
    elif mode == "dns":
        result = dns_query(*args)
    else:
        result = {"ok": False, "error": f"unknown mode {mode}"}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
