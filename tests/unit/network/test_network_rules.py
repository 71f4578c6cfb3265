"""Pure checks of addressing, policy mapping and the generated nftables rulesets."""

from __future__ import annotations

import ipaddress

from cleanroom.network.addressing import DEFAULT_POOL, guest_mac, plan_slot, slot_count
from cleanroom.network.egress import allowed_elements, denied_elements, name_verdict
from cleanroom.network.ruleset import (
    RUN_TABLE,
    RunRules,
    drop_all_ruleset,
    explicit_elements,
    run_ruleset,
    uplink_ruleset,
)
from cleanroom.policy import compile_policy_text

POLICY = compile_policy_text(
    """
version: 1
sandbox:
  network:
    allow:
      - host: "*.example.test"
        ports: [443, 8443]
      - host: 169.254.169.254
        ports: [80]
      - host: 0.0.0.0/0
        ports: [22]
    deny:
      - host: bad.example.test
      - host: half.example.test
        ports: [8443]
""",
    "cleanroom.yaml",
)


def test_slots_do_not_overlap_and_macs_are_local_unicast() -> None:
    a, b = plan_slot(DEFAULT_POOL, 0), plan_slot(DEFAULT_POOL, 1)
    nets = [a.guest_network, a.veth_network, b.guest_network, b.veth_network]
    assert all(not x.overlaps(y) for i, x in enumerate(nets) for y in nets[i + 1 :])
    assert a.guest in a.guest_network
    assert a.gateway in a.guest_network
    assert a.uplink_address in a.veth_network
    assert a.run_address in a.veth_network
    assert slot_count(DEFAULT_POOL) == 8192
    first_octet = int(guest_mac("run-1").split(":")[0], 16)
    assert first_octet & 0b10
    assert not first_octet & 0b1


def test_name_verdicts_follow_policy_precedence() -> None:
    assert name_verdict(POLICY, "a.example.test").ports == (443, 8443)
    assert not name_verdict(POLICY, "example.test").allowed
    bad = name_verdict(POLICY, "bad.example.test")
    assert not bad.allowed
    assert bad.rule.startswith("deny[")
    half = name_verdict(POLICY, "half.example.test")
    assert half.allowed
    assert half.ports == (443,)


def _rules() -> RunRules:
    return RunRules(
        link=plan_slot(DEFAULT_POOL, 3),
        guest_if="tap0",
        pool=DEFAULT_POOL,
        resolvers=(ipaddress.IPv4Address("192.0.2.53"),),
        uplink_local=(ipaddress.IPv4Address("192.0.2.1"),),
        allowed=allowed_elements(POLICY),
        denied=denied_elements(POLICY),
    )


def test_guarded_ranges_open_only_for_explicitly_named_addresses() -> None:
    link_local = ipaddress.IPv4Network("169.254.0.0/16")
    explicit = explicit_elements(allowed_elements(POLICY), [link_local])
    assert {e.nft() for e in explicit} == {
        "169.254.169.254 . tcp . 80",
        "169.254.169.254 . udp . 80",
    }
    text = run_ruleset(_rules())
    assert "169.254.169.254 . tcp . 80" in text.split("set explicit")[1].split("}")[0]
    assert "0.0.0.0/0 . tcp . 22" not in text.split("set explicit")[1].split("}")[0]


def test_run_ruleset_checks_deny_before_allow_and_drops_by_default() -> None:
    text = run_ruleset(_rules())
    forward = text.split("chain forward")[1]
    assert (
        forward.index("@denied")
        < forward.index("@guarded")
        < forward.index('@allowed counter name "allowed_new" accept')
    )
    assert "policy drop" in forward
    assert "policy drop" in text.split("chain input")[1].split("}")[0]
    assert 'oifname "veth0" masquerade' in text
    assert "meta nfproto ipv6 drop" in text


def test_uplink_ruleset_masquerades_the_pool_only() -> None:
    text = uplink_ruleset(DEFAULT_POOL)
    assert f'ip saddr {DEFAULT_POOL} oifname != "crnv*" masquerade' in text
    assert f'iifname "crnv*" ip daddr {DEFAULT_POOL} drop' in text


def test_drop_all_ruleset_replaces_the_table_with_four_dropping_hooks() -> None:
    lines = drop_all_ruleset().splitlines()
    assert lines[:3] == [
        f"table inet {RUN_TABLE}",
        f"delete table inet {RUN_TABLE}",
        f"table inet {RUN_TABLE} {{",
    ]
    hooks = [line.strip() for line in lines if "hook" in line]
    assert hooks == [
        "type filter hook prerouting priority raw; policy drop;",
        "type filter hook input priority filter; policy drop;",
        "type filter hook forward priority filter; policy drop;",
        "type filter hook output priority filter; policy drop;",
    ]
    assert lines[-1] == "}"
    assert "accept" not in drop_all_ruleset()
