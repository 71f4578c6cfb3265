"""The egress decision pinned where a mutation check found it loose: the port range
at both ends, the error messages, and the tie-breaks of the precedence order."""

from __future__ import annotations

import pytest

from cleanroom.errors import InvalidRequest
from cleanroom.policy import Decision, compile_policy_text, decide

POLICY = """\
version: 1
sandbox:
  network:
    allow:
      - host: "*.example.test"
        ports: [1, 443, 65535]
      - host: "*.z.example.test"
        ports: [443]
      - host: api.example.test
        ports: [443]
      - host: api.example.test
        ports: [443, 8080]
"""


@pytest.mark.parametrize("port", [1, 65535])
def test_both_ends_of_the_port_range_are_ports(port: int) -> None:
    policy = compile_policy_text(POLICY, "p.yaml")
    assert decide(policy, "w.example.test", port, "tcp") == Decision(
        True, "allow[0] *.example.test:1,443,65535"
    )


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_ports_outside_the_range_name_the_range(port: int) -> None:
    policy = compile_policy_text(POLICY, "p.yaml")
    expected = f"port must be an integer between 1 and 65535, not {port}"
    with pytest.raises(InvalidRequest, match=expected):
        decide(policy, "w.example.test", port, "tcp")


def test_an_unknown_protocol_is_named() -> None:
    policy = compile_policy_text(POLICY, "p.yaml")
    with pytest.raises(InvalidRequest, match="protocol must be 'tcp' or 'udp', not 'sctp'"):
        decide(policy, "w.example.test", 443, "sctp")  # type: ignore[arg-type]


def test_the_deeper_wildcard_wins_even_when_it_sorts_later() -> None:
    policy = compile_policy_text(POLICY, "p.yaml")
    assert [rule.host for rule in policy.allow[:2]] == ["*.example.test", "*.z.example.test"]
    assert decide(policy, "w.z.example.test", 443, "tcp") == Decision(
        True, "allow[1] *.z.example.test:443"
    )


def test_equally_specific_allows_resolve_to_the_first_in_canonical_order() -> None:
    policy = compile_policy_text(POLICY, "p.yaml")
    assert decide(policy, "api.example.test", 443, "tcp") == Decision(
        True, "allow[2] api.example.test:443"
    )
    assert decide(policy, "api.example.test", 8080, "udp") == Decision(
        True, "allow[3] api.example.test:443,8080"
    )
