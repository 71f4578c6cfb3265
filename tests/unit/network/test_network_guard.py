"""Address classification and the run table's forbidden/guarded sets (pure, no root)."""

from __future__ import annotations

import ipaddress

import pytest

from cleanroom.config import parse_config_text
from cleanroom.config_limits import LimitsConfig
from cleanroom.errors import ConfigInvalid
from cleanroom.network import EgressGuard, special_reason
from cleanroom.network.addressing import DEFAULT_POOL, plan_slot
from cleanroom.network.egress import Element, allowed_elements, denied_elements
from cleanroom.network.ruleset import (
    GUARDED_RANGES,
    RunRules,
    add_permanent_elements,
    explicit_elements,
    run_ruleset,
)
from cleanroom.network.values import dns_limits
from cleanroom.policy import CompiledPolicy, compile_policy_text

BOUNDARIES = [
    # (address, reason or None): both sides of every special range's edges
    ("0.0.0.0", "unspecified"),
    ("0.255.255.255", "unspecified"),
    ("1.0.0.0", None),
    ("9.255.255.255", None),
    ("10.0.0.0", "private"),
    ("10.255.255.255", "private"),
    ("11.0.0.0", None),
    ("100.63.255.255", None),
    ("100.64.0.0", "cgnat"),
    ("100.127.255.255", "cgnat"),
    ("100.128.0.0", None),
    ("126.255.255.255", None),
    ("127.0.0.1", "loopback"),
    ("127.255.255.255", "loopback"),
    ("128.0.0.0", None),
    ("169.253.255.255", None),
    ("169.254.0.0", "link-local"),
    ("169.254.169.254", "link-local"),
    ("169.254.255.255", "link-local"),
    ("169.255.0.0", None),
    ("172.15.255.255", None),
    ("172.16.0.0", "private"),
    ("172.31.255.255", "private"),
    ("172.32.0.0", None),
    ("192.167.255.255", None),
    ("192.168.0.0", "private"),
    ("192.168.255.255", "private"),
    ("192.169.0.0", None),
    ("223.255.255.255", None),
    ("224.0.0.0", "multicast"),
    ("239.255.255.255", "multicast"),
    ("240.0.0.0", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    # the test topology's "internet" (documentation ranges) stays public
    ("192.0.2.10", None),
    ("198.51.100.7", None),
    ("203.0.113.5", None),
    ("8.8.8.8", None),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::2", None),
    ("fbff:ffff::1", None),
    ("fc00::", "ula"),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ula"),
    ("fe00::", None),
    ("fe7f:ffff::1", None),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fec0::1", None),
    ("ff02::1", "multicast"),
    ("2001:db8::1", None),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:100.64.0.1", "cgnat"),
    ("::ffff:8.8.8.8", None),
]


@pytest.mark.parametrize(("address", "reason"), BOUNDARIES)
def test_special_reason_boundaries(address: str, reason: str | None) -> None:
    assert special_reason(ipaddress.ip_address(address)) == reason


def test_guard_refuses_host_and_run_networks_before_special_ranges() -> None:
    guard = EgressGuard.of(
        [ipaddress.IPv4Address("198.51.100.50"), ipaddress.IPv4Address("10.0.0.7")],
        [DEFAULT_POOL],
    )
    ip = ipaddress.ip_address
    assert guard.refusal(ip("198.51.100.50")) == "host"
    assert guard.refusal(ip("::ffff:198.51.100.50")) == "host"
    assert guard.refusal(ip("198.51.100.51")) is None
    assert guard.refusal(ip("10.0.0.7")) == "host"
    assert guard.refusal(ip("10.231.0.0")) == "run-network"
    assert guard.refusal(ip("10.231.255.255")) == "run-network"
    assert guard.refusal(ip("10.230.255.255")) == "private"
    assert guard.refusal(ip("10.232.0.0")) == "private"
    assert guard.refusal(ip("100.64.0.0")) == "cgnat"
    assert guard.refusal(ip("203.0.113.5")) is None
    assert EgressGuard().refusal(ip("10.231.0.1")) == "private"


def _policy(allow: list[str], deny: tuple[str, ...] = ()) -> CompiledPolicy:
    lines = ["version: 1", "sandbox:", "  network:", "    allow:"]
    lines += [f'      - host: "{h}"\n        ports: [8080]' for h in allow]
    if deny:
        lines.append("    deny:")
        lines += [f'      - host: "{h}"' for h in deny]
    return compile_policy_text("\n".join(lines) + "\n", "cleanroom.yaml")


def _explicit_hosts(allow: list[str]) -> set[str]:
    policy = _policy(allow)
    explicit = explicit_elements(allowed_elements(policy), GUARDED_RANGES)
    return {e.nft().split(" . ")[0] for e in explicit}


def test_private_ranges_open_only_through_rules_naming_them_or_a_sub_range() -> None:
    assert _explicit_hosts(["0.0.0.0/0"]) == set()
    assert _explicit_hosts(["0.0.0.0/1", "128.0.0.0/1"]) == set()
    assert _explicit_hosts(["10.0.0.0/8"]) == {"10.0.0.0/8"}
    assert _explicit_hosts(["10.0.0.0/7"]) == set()  # wider than 10/8: names no range
    assert _explicit_hosts(["172.16.0.0/12", "172.20.0.0/16"]) == {
        "172.16.0.0/12",
        "172.20.0.0/16",
    }
    assert _explicit_hosts(["172.0.0.0/8"]) == set()
    assert _explicit_hosts(["172.15.0.0/16", "172.32.0.0/16"]) == set()
    assert _explicit_hosts(["100.64.0.0/10", "100.0.0.0/8"]) == {"100.64.0.0/10"}
    assert _explicit_hosts(["100.64.0.0/11"]) == {"100.64.0.0/11"}
    assert _explicit_hosts(["192.168.1.5", "169.254.169.254", "127.0.0.1"]) == {
        "192.168.1.5",
        "169.254.169.254",
        "127.0.0.1",
    }
    assert _explicit_hosts(["198.51.100.0/24"]) == set()  # not special: plain allow


def _rules(policy: CompiledPolicy, host: tuple[str, ...]) -> RunRules:
    return RunRules(
        link=plan_slot(DEFAULT_POOL, 3),
        guest_if="tap0",
        pool=DEFAULT_POOL,
        resolvers=(ipaddress.IPv4Address("192.0.2.53"),),
        uplink_local=(),
        allowed=allowed_elements(policy),
        denied=denied_elements(policy),
        learned_denied=(Element(ipaddress.IPv4Network("203.0.113.9/32"), "tcp", 0, 65535),),
        host_addresses=tuple(ipaddress.IPv4Address(a) for a in host),
    )


def _set_body(text: str, name: str) -> str:
    return text.split(f"\tset {name} {{")[1].split("\t}", maxsplit=1)[0]


def test_forbidden_set_holds_host_and_pool_collapsed_and_comes_before_any_allow() -> None:
    text = run_ruleset(
        _rules(_policy(["0.0.0.0/0", "10.0.0.0/8"]), ("198.51.100.50", "10.231.0.5", "10.9.9.9"))
    )
    forbidden = _set_body(text, "forbidden")
    # the pool swallows the host's own address inside it; the others stay single
    assert "elements = { 10.9.9.9/32, 10.231.0.0/16, 198.51.100.50/32 }" in forbidden
    forward = text.split("chain forward")[1]
    order = [
        forward.index("@denied"),
        forward.index("ip daddr @forbidden goto blocked"),
        forward.index("@guarded"),
        forward.index('@allowed counter name "allowed_new" accept'),
    ]
    assert order == sorted(order)
    guarded = _set_body(text, "guarded")
    for net in ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16"):
        assert net in guarded
    assert "10.0.0.0/8 . tcp . 8080" in _set_body(text, "explicit")
    assert "0.0.0.0/0" not in _set_body(text, "explicit")
    # nft refuses nested elements in one set: 0.0.0.0/0 covers 10/8 in "allowed".
    allowed = _set_body(text, "allowed")
    assert "0.0.0.0/0 . tcp . 8080" in allowed
    assert "10.0.0.0/8" not in allowed


def test_deny_elements_of_names_never_expire() -> None:
    text = run_ruleset(_rules(_policy(["0.0.0.0/0"], ("bad.example.test",)), ()))
    denied = _set_body(text, "denied")
    assert "203.0.113.9 . tcp . 0-65535" in denied
    assert "timeout" not in denied.split("flags")[1].split("\n", 1)[1]
    script = add_permanent_elements(
        "denied", [Element(ipaddress.IPv4Network("203.0.113.9/32"), "udp", 443, 443)] * 2
    )
    assert script == "add element inet cleanroom denied { 203.0.113.9 . udp . 443 }\n"


def test_dns_limit_keys_parse_with_defaults_and_minimums() -> None:
    defaults = dns_limits(LimitsConfig())
    assert (defaults.tcp_clients, defaults.inflight_queries) == (8, 32)
    assert (defaults.queries_per_second, defaults.audit_bytes) == (100, 4 << 20)
    config = parse_config_text(
        "limits:\n  dns_tcp_clients: 2\n  dns_inflight_queries: 3\n"
        "  dns_queries_per_second: 4\n  dns_audit_bytes: 8192\n",
        "config.yaml",
    )
    got = dns_limits(config.limits)
    assert (got.tcp_clients, got.inflight_queries, got.queries_per_second) == (2, 3, 4)
    assert got.audit_bytes == 8192
    for bad in ("dns_tcp_clients: 0", "dns_inflight_queries: 0", "dns_audit_bytes: 100"):
        with pytest.raises(ConfigInvalid) as caught:
            parse_config_text(f"limits:\n  {bad}\n", "config.yaml")
        key = bad.split(":")[0]
        assert any(f"limits.{key}" in p for p in caught.value.details["problems"])
