"""The egress decision: deterministic precedence, independent of rule order."""

from __future__ import annotations

import pytest

from cleanroom.errors import InvalidRequest
from cleanroom.policy import CompiledPolicy, Decision, compile_policy_text, decide, name_allowed

POLICY = """\
version: 1
sandbox:
  network:
    allow:
      - host: "*.example.test"
        ports: [443]
      - host: "*.deep.example.test"
        ports: [443, 8443]
      - host: api.example.test
        ports: [443, 8080]
      - host: evil.example.test
        reason: denied below anyway
      - host: 198.51.100.0/24
        ports: [53]
      - host: 198.51.100.0/28
        ports: [53]
      - host: 198.51.100.7
        ports: [53]
      - host: 2001:db8::/32
        ports: [443]
    deny:
      - host: evil.example.test
      - host: "*.bad.example.test"
        ports: [443]
      - host: 198.51.100.13
"""


@pytest.fixture
def policy() -> CompiledPolicy:
    return compile_policy_text(POLICY, "cleanroom.yaml")


def test_canonical_rule_order(policy: CompiledPolicy) -> None:
    assert [rule.host for rule in policy.allow] == [
        "*.deep.example.test",
        "*.example.test",
        "198.51.100.0/24",
        "198.51.100.0/28",
        "198.51.100.7",
        "2001:db8::/32",
        "api.example.test",
        "evil.example.test",
    ]
    assert [rule.host for rule in policy.deny] == [
        "*.bad.example.test",
        "198.51.100.13",
        "evil.example.test",
    ]


@pytest.mark.parametrize(
    ("target", "port", "expected"),
    [
        # exact allow beats the wildcard that also covers it
        ("api.example.test", 443, Decision(True, "allow[6] api.example.test:443,8080")),
        ("API.Example.Test.", 8080, Decision(True, "allow[6] api.example.test:443,8080")),
        # wildcard at any depth, never the apex
        ("www.example.test", 443, Decision(True, "allow[1] *.example.test:443")),
        ("a.b.c.example.test", 443, Decision(True, "allow[1] *.example.test:443")),
        ("example.test", 443, Decision(False, "default deny")),
        # the more specific wildcard wins
        ("x.deep.example.test", 443, Decision(True, "allow[0] *.deep.example.test:443,8443")),
        ("x.deep.example.test", 8443, Decision(True, "allow[0] *.deep.example.test:443,8443")),
        # wrong port
        ("www.example.test", 80, Decision(False, "default deny")),
        # deny beats an exact allow of the same host
        ("evil.example.test", 443, Decision(False, "deny[2] evil.example.test")),
        # wildcard deny beats wildcard allow, only on its ports
        ("x.bad.example.test", 443, Decision(False, "deny[0] *.bad.example.test:443")),
        ("bad.example.test", 443, Decision(True, "allow[1] *.example.test:443")),
        # IPs: exact, longer prefix, shorter prefix, CIDR deny
        ("198.51.100.7", 53, Decision(True, "allow[4] 198.51.100.7:53")),
        ("198.51.100.9", 53, Decision(True, "allow[3] 198.51.100.0/28:53")),
        ("198.51.100.99", 53, Decision(True, "allow[2] 198.51.100.0/24:53")),
        ("198.51.100.13", 53, Decision(False, "deny[1] 198.51.100.13")),
        ("198.51.101.1", 53, Decision(False, "default deny")),
        ("2001:db8::5", 443, Decision(True, "allow[5] [2001:db8::/32]:443")),
        ("2001:db9::5", 443, Decision(False, "default deny")),
        # an IP is not matched against name rules and vice versa
        ("unknown.test", 53, Decision(False, "default deny")),
    ],
)
def test_decisions(policy: CompiledPolicy, target: str, port: int, expected: Decision) -> None:
    assert decide(policy, target, port, "tcp") == expected
    assert decide(policy, target, port, "udp") == expected


def test_cidr_deny_beats_exact_ip_allow() -> None:
    policy = compile_policy_text(
        "version: 1\nsandbox:\n  network:\n"
        "    allow: [{host: 192.0.2.10, ports: [443]}]\n"
        "    deny: [{host: 192.0.2.0/24}]\n",
        "p.yaml",
    )
    assert decide(policy, "192.0.2.10", 443, "tcp") == Decision(False, "deny[0] 192.0.2.0/24")


def test_rule_order_in_file_does_not_change_decisions() -> None:
    forward = compile_policy_text(POLICY, "a.yaml")
    lines = POLICY.splitlines()
    allow_start = lines.index("    allow:") + 1
    deny_start = lines.index("    deny:")
    allow_items = [lines[i : i + 2] for i in range(allow_start, deny_start, 2)]
    reordered_lines = [*lines[:allow_start]]
    for item in reversed(allow_items):
        reordered_lines.extend(item)
    reordered_lines.extend(lines[deny_start:])
    backward = compile_policy_text("\n".join(reordered_lines) + "\n", "b.yaml")
    assert forward == backward
    for target in ("api.example.test", "x.deep.example.test", "198.51.100.9", "evil.example.test"):
        assert decide(forward, target, 443, "tcp") == decide(backward, target, 443, "tcp")


@pytest.mark.parametrize(
    ("target", "port", "protocol"),
    [
        ("*.example.test", 443, "tcp"),
        ("198.51.100.0/24", 443, "tcp"),
        ("example.test", 0, "tcp"),
        ("example.test", 65536, "tcp"),
        ("example.test", True, "tcp"),
        ("example.test", 443, "icmp"),
        ("https://example.test", 443, "tcp"),
    ],
)
def test_invalid_requests(policy: CompiledPolicy, target: str, port: int, protocol: str) -> None:
    with pytest.raises(InvalidRequest):
        decide(policy, target, port, protocol)  # type: ignore[arg-type]


def test_name_allowed_for_the_resolver(policy: CompiledPolicy) -> None:
    assert name_allowed(policy, "api.example.test")
    assert name_allowed(policy, "www.example.test")
    assert not name_allowed(policy, "example.test")
    assert not name_allowed(policy, "evil.example.test")  # denied on every port
    assert name_allowed(policy, "x.bad.example.test")  # denied on 443 only
    assert not name_allowed(policy, "198.51.100.7")
    assert not name_allowed(policy, "other.test")
