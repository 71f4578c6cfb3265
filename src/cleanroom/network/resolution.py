"""Resolving a policy's exact names when a run network is activated."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from cleanroom.network.audit import AuditLog
from cleanroom.network.dns import UpstreamClient, UpstreamFailed
from cleanroom.network.egress import (
    PROTOCOLS,
    Element,
    denied_names,
    exact_allowed_names,
    name_verdict,
)
from cleanroom.policy import CompiledPolicy

__all__ = ["Learned", "elements_for", "resolve_policy_names"]

Learned = tuple[tuple[Element, int], ...]
"""Firewall set elements with their timeout in seconds."""


def elements_for(
    addresses: tuple[ipaddress.IPv4Address, ...], ports: tuple[int, ...]
) -> list[Element]:
    """Allow elements for every address, port and protocol."""
    return [
        Element(ipaddress.IPv4Network(a), proto, p, p)
        for a in addresses
        for p in ports
        for proto in PROTOCOLS
    ]


async def resolve_policy_names(
    upstream: UpstreamClient, policy: CompiledPolicy, audit: AuditLog, ttl_floor: int
) -> tuple[Learned, Learned]:
    """Resolve allowed exact names (and denied exact names) once, so the first
    connection needs no query and denied names stay blocked by address.

    Returns (learned allow elements, learned deny elements); every answer is
    written to ``audit`` as a ``resolved`` event.
    """
    allowed_names = exact_allowed_names(policy)
    denied = denied_names(policy)

    async def one(name: str) -> tuple[str, Any]:
        try:
            return name, await upstream.query(name, "A")
        except UpstreamFailed as exc:
            return name, exc

    results = await asyncio.gather(*(one(n) for n in (*allowed_names, *(n for n, _ in denied))))
    answers = dict(results)
    learned: list[tuple[Element, int]] = []
    for name in allowed_names:
        verdict = name_verdict(policy, name)
        answer = answers[name]
        if isinstance(answer, UpstreamFailed):
            audit.write("resolved", name=name, answers=[], error=str(answer), purpose="allow")
            continue
        ttl = max(answer.ttl, ttl_floor)
        if verdict.allowed:
            learned += [(e, ttl) for e in elements_for(answer.addresses, verdict.ports)]
        audit.write(
            "resolved",
            name=name,
            answers=[str(a) for a in answer.addresses],
            ports=list(verdict.ports),
            rule=verdict.rule,
            purpose="allow",
        )
    learned_denied: list[tuple[Element, int]] = []
    for name, ports in denied:
        answer = answers[name]
        if isinstance(answer, UpstreamFailed):
            continue
        ttl = max(answer.ttl, ttl_floor)
        for address in answer.addresses:
            net = ipaddress.IPv4Network(address)
            for proto in PROTOCOLS:
                if ports is None:
                    learned_denied.append((Element(net, proto, 0, 65535), ttl))
                else:
                    learned_denied += [(Element(net, proto, p, p), ttl) for p in ports]
        audit.write(
            "resolved", name=name, answers=[str(a) for a in answer.addresses], purpose="deny"
        )
    return tuple(learned), tuple(learned_denied)
