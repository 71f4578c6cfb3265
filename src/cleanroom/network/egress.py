"""What a compiled policy means for one run's firewall and resolver.

Pure functions over :class:`~cleanroom.policy.CompiledPolicy`: which ports a
DNS name may use (and which rule said so), and the static firewall elements
for IP/CIDR rules. The policy's own :func:`~cleanroom.policy.decide` is the
single source of precedence (deny first, exact before wildcard/CIDR); this
module only enumerates the candidates. IPv6 rules contribute nothing here:
the run network drops IPv6 entirely.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from cleanroom.policy import AllowRule, CompiledPolicy, DenyRule, decide

__all__ = [
    "PROTOCOLS",
    "Element",
    "NameVerdict",
    "allowed_elements",
    "denied_elements",
    "denied_names",
    "exact_allowed_names",
    "name_verdict",
    "prune_covered",
]

Protocol = Literal["tcp", "udp"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp")

_Rule = TypeVar("_Rule", AllowRule, DenyRule)


@dataclass(frozen=True)
class Element:
    """One firewall set element: an IPv4 block, a protocol and a port range."""

    network: ipaddress.IPv4Network
    protocol: Protocol
    first_port: int
    last_port: int

    def nft(self) -> str:
        """The element in nft syntax (``addr[/len] . proto . port[-port]``)."""
        net = self.network
        addr = str(net.network_address) if net.prefixlen == 32 else str(net)
        ports = (
            str(self.first_port)
            if self.first_port == self.last_port
            else f"{self.first_port}-{self.last_port}"
        )
        return f"{addr} . {self.protocol} . {ports}"

    def covers(self, other: Element) -> bool:
        """Whether every packet ``other`` matches, this element matches too."""
        return (
            self.protocol == other.protocol
            and other.network.subnet_of(self.network)
            and self.first_port <= other.first_port
            and other.last_port <= self.last_port
        )


def prune_covered(elements: Iterable[Element]) -> tuple[Element, ...]:
    """``elements`` without duplicates and without those another one covers, in order.

    nft refuses (``File exists``) an interval element that lies wholly inside
    one already in the set, so a set definition must not hold both.
    """
    unique = list(dict.fromkeys(elements))
    return tuple(
        e for e in unique if not any(o is not e and o != e and o.covers(e) for o in unique)
    )


@dataclass(frozen=True)
class NameVerdict:
    """Whether the resolver may answer ``name``, on which ports its addresses open, and why."""

    name: str
    allowed: bool
    ports: tuple[int, ...]
    rule: str


def name_verdict(policy: CompiledPolicy, name: str) -> NameVerdict:
    """The resolver's decision for the normalised DNS ``name``.

    A name is answered when some port of an allow rule covering it survives
    :func:`~cleanroom.policy.decide` (so port-scoped denies remove just those
    ports and every-port denies refuse the name). ``rule`` names the deciding
    rule(s).
    """
    if policy.name_is_denied(name):
        deny = next(
            f"deny[{i}] {r.label()}"
            for i, r in enumerate(policy.deny)
            if r.ports is None and r.spec.matches_name(name)
        )
        return NameVerdict(name, allowed=False, ports=(), rule=deny)
    candidates = sorted(
        {
            port
            for rule in policy.allowed_names
            if rule.spec.matches_name(name)
            for port in rule.ports
        }
    )
    ports: list[int] = []
    rules: list[str] = []
    for port in candidates:
        decision = decide(policy, name, port, "tcp")
        if decision.allowed:
            ports.append(port)
        if decision.rule not in rules:
            rules.append(decision.rule)
    if not ports:
        return NameVerdict(name, allowed=False, ports=(), rule="; ".join(rules) or "default deny")
    return NameVerdict(name, allowed=True, ports=tuple(ports), rule="; ".join(rules))


def _ipv4_rules(rules: Iterable[_Rule]) -> Iterator[tuple[_Rule, ipaddress.IPv4Network]]:
    """The ``ip``/``cidr`` rules of an IPv4 block, each with its block."""
    for rule in rules:
        if isinstance(rule.network, ipaddress.IPv4Network):
            yield rule, rule.network


def allowed_elements(policy: CompiledPolicy) -> tuple[Element, ...]:
    """Static allow elements for IPv4 ``ip``/``cidr`` rules, every port on TCP and UDP."""
    return tuple(
        Element(network, proto, p, p)
        for rule, network in _ipv4_rules(policy.allowed_networks)
        for p in rule.ports
        for proto in PROTOCOLS
    )


def denied_elements(policy: CompiledPolicy) -> tuple[Element, ...]:
    """Static deny elements for IPv4 ``ip``/``cidr`` deny rules (no ports: every port)."""
    out: list[Element] = []
    for rule, network in _ipv4_rules(policy.deny):
        for proto in PROTOCOLS:
            if rule.ports is None:
                out.append(Element(network, proto, 0, 65535))
            else:
                out.extend(Element(network, proto, p, p) for p in rule.ports)
    return tuple(out)


def exact_allowed_names(policy: CompiledPolicy) -> tuple[str, ...]:
    """Exact names of allow rules (resolved once at setup), in policy order."""
    return tuple(dict.fromkeys(r.host for r in policy.allowed_names if r.kind == "name"))


def denied_names(policy: CompiledPolicy) -> tuple[tuple[str, tuple[int, ...] | None], ...]:
    """Exact names of deny rules with their ports (resolved at setup so their
    addresses stay blocked even when reached by IP or through another name)."""
    return tuple((r.host, r.ports) for r in policy.deny if r.kind == "name")
