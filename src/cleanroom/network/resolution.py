"""Resolving a policy's exact names when a run network is activated (and refreshing denies).

Allowed names' answers become timed allow elements, except addresses the
:class:`~cleanroom.network.guard.EgressGuard` refuses (recorded as
``not_learned`` in the ``resolved`` event). Denied names' answers become
deny elements without a timeout: they last as long as the run, and
:func:`denied_name_elements` is called again periodically so a denied name
that moves to a new address is blocked there too.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from cleanroom.network.audit import AuditLog
from cleanroom.network.egress import (
    PROTOCOLS,
    Element,
    denied_names,
    exact_allowed_names,
    name_verdict,
)
from cleanroom.network.guard import EgressGuard
from cleanroom.network.upstream import UpstreamAnswer, UpstreamClient, UpstreamFailed
from cleanroom.policy import CompiledPolicy

__all__ = ["Learned", "denied_name_elements", "elements_for", "resolve_policy_names"]

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


async def _query_all(
    upstream: UpstreamClient, names: list[str]
) -> dict[str, UpstreamAnswer | UpstreamFailed]:
    async def one(name: str) -> tuple[str, UpstreamAnswer | UpstreamFailed]:
        try:
            return name, await upstream.query(name, "A")
        except UpstreamFailed as exc:
            return name, exc

    return dict(await asyncio.gather(*(one(n) for n in dict.fromkeys(names))))


def _deny_elements(answer: UpstreamAnswer, ports: tuple[int, ...] | None) -> list[Element]:
    out: list[Element] = []
    for address in answer.addresses:
        net = ipaddress.IPv4Network(address)
        for proto in PROTOCOLS:
            if ports is None:
                out.append(Element(net, proto, 0, 65535))
            else:
                out += [Element(net, proto, p, p) for p in ports]
    return out


async def denied_name_elements(
    upstream: UpstreamClient, policy: CompiledPolicy, audit: AuditLog | None = None
) -> tuple[Element, ...]:
    """Deny elements for the current addresses of every denied exact name (a name
    that fails to resolve contributes nothing); each answer is audited as a
    ``resolved`` event with ``purpose: deny`` when ``audit`` is given."""
    denied = denied_names(policy)
    answers = await _query_all(upstream, [n for n, _ in denied])
    out: list[Element] = []
    for name, ports in denied:
        answer = answers[name]
        if isinstance(answer, UpstreamFailed):
            continue
        out += _deny_elements(answer, ports)
        if audit is not None:
            audit.write(
                "resolved", name=name, answers=[str(a) for a in answer.addresses], purpose="deny"
            )
    return tuple(dict.fromkeys(out))


async def resolve_policy_names(
    upstream: UpstreamClient,
    policy: CompiledPolicy,
    audit: AuditLog,
    ttl_floor: int,
    guard: EgressGuard | None = None,
) -> tuple[Learned, tuple[Element, ...]]:
    """Resolve allowed exact names (and denied exact names) once, so the first
    connection needs no query and denied names stay blocked by address.

    Returns (learned allow elements with their timeouts, deny elements without
    a timeout); every answer is written to ``audit`` as a ``resolved`` event.
    """
    checker = guard if guard is not None else EgressGuard()
    allowed_names = exact_allowed_names(policy)
    answers, learned_denied = await asyncio.gather(
        _query_all(upstream, list(allowed_names)), denied_name_elements(upstream, policy, audit)
    )
    learned: list[tuple[Element, int]] = []
    for name in allowed_names:
        verdict = name_verdict(policy, name)
        answer = answers[name]
        if isinstance(answer, UpstreamFailed):
            audit.write("resolved", name=name, answers=[], error=str(answer), purpose="allow")
            continue
        ttl = max(answer.ttl, ttl_floor)
        refused = {str(a): r for a in answer.addresses if (r := checker.refusal(a)) is not None}
        usable = tuple(a for a in answer.addresses if str(a) not in refused)
        if verdict.allowed:
            learned += [(e, ttl) for e in elements_for(usable, verdict.ports)]
        extra: dict[str, Any] = {"not_learned": refused} if refused else {}
        audit.write(
            "resolved",
            name=name,
            answers=[str(a) for a in answer.addresses],
            ports=list(verdict.ports),
            rule=verdict.rule,
            purpose="allow",
            **extra,
        )
    return tuple(learned), learned_denied
