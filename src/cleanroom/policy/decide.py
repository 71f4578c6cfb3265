"""The egress decision: a pure function of a compiled policy and a destination.

Precedence, highest first (deterministic, independent of rule order in the file):

1. an explicit deny: an exact name, a wildcard covering the name, an equal IP
   or a CIDR containing the IP, on a covered port;
2. an exact allow (the same name or IP) whose ports include the port;
3. a wildcard or CIDR allow, most specific first (deeper wildcard, longer
   prefix), whose ports include the port;
4. the default: deny.

Names and IP addresses are matched only against rules of their own kind; the
network layer maps resolved addresses back to the names that produced them.
Policies carry no protocol: an allowed ``host:port`` is allowed for TCP and UDP.
"""

from __future__ import annotations

from typing import Literal

from cleanroom.errors import InvalidRequest
from cleanroom.policy.hosts import HostSpec, IPAddress, parse_target
from cleanroom.policy.model import CompiledPolicy, Decision

__all__ = ["decide", "name_allowed"]

_MIN_PORT, _MAX_PORT = 1, 65535


def _matches(spec: HostSpec, target: IPAddress | str) -> bool:
    if isinstance(target, str):
        return spec.matches_name(target)
    return spec.matches_address(target)


def decide(
    policy: CompiledPolicy, target: str, port: int, protocol: Literal["tcp", "udp"]
) -> Decision:
    """Whether ``policy`` allows ``protocol`` traffic to ``target`` (name or IP) on ``port``.

    Raises :class:`~cleanroom.errors.InvalidRequest` for an unusable target,
    port or protocol.
    """
    if protocol not in ("tcp", "udp"):
        raise InvalidRequest(f"protocol must be 'tcp' or 'udp', not {protocol!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not _MIN_PORT <= port <= _MAX_PORT:
        raise InvalidRequest(f"port must be an integer between 1 and 65535, not {port!r}")
    normalised = parse_target(target)
    for index, deny_rule in enumerate(policy.deny):
        if deny_rule.covers_port(port) and _matches(deny_rule.spec, normalised):
            return Decision(allowed=False, rule=f"deny[{index}] {deny_rule.label()}")
    candidates = [
        (index, rule)
        for index, rule in enumerate(policy.allow)
        if port in rule.ports and _matches(rule.spec, normalised)
    ]
    if candidates:
        index, rule = max(candidates, key=lambda item: (item[1].spec.specificity(), -item[0]))
        return Decision(allowed=True, rule=f"allow[{index}] {rule.label()}")
    return Decision(allowed=False, rule="default deny")


def name_allowed(policy: CompiledPolicy, name: str) -> bool:
    """Whether a DNS query for ``name`` may be answered: some allow rule covers the name
    (on any port) and no every-port deny rule does.

    Raises :class:`~cleanroom.errors.InvalidRequest` if ``name`` is not a host name.
    """
    target = parse_target(name)
    if not isinstance(target, str) or policy.name_is_denied(target):
        return False
    return any(rule.spec.matches_name(target) for rule in policy.allowed_names)
