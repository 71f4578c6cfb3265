"""Host normalisation: names, IDN, wildcards, IP literals, CIDR, and refusals."""

from __future__ import annotations

import ipaddress

import pytest

from cleanroom.errors import InvalidRequest
from cleanroom.policy import InvalidHost, normalize_host, parse_host
from cleanroom.policy.hosts import parse_target


@pytest.mark.parametrize(
    ("raw", "expected", "kind"),
    [
        ("example.test", "example.test", "name"),
        ("  Example.TEST.  ", "example.test", "name"),
        ("Bücher.Example", "xn--bcher-kva.example", "name"),
        ("faß.de", "xn--fa-hia.de", "name"),
        ("localhost", "localhost", "name"),
        ("*.example.test", "*.example.test", "wildcard"),
        ("*.Bücher.Example.", "*.xn--bcher-kva.example", "wildcard"),
        ("192.0.2.10", "192.0.2.10", "ip"),
        ("2001:DB8:0:0::1", "2001:db8::1", "ip"),
        ("198.51.100.0/24", "198.51.100.0/24", "cidr"),
        ("2001:db8::/32", "2001:db8::/32", "cidr"),
        ("203.0.113.7/32", "203.0.113.7", "ip"),
    ],
)
def test_normalises_accepted_hosts(raw: str, expected: str, kind: str) -> None:
    spec = parse_host(raw)
    assert spec.text == expected
    assert spec.kind == kind
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "exa mple.test",
        "foo.*.com",
        "*",
        "*.",
        "**.example.test",
        "https://example.test",
        "example.test/path",
        "example.test:443",
        "foo_bar.example.test",
        "198.51.100.1/24",  # host bits set
        "192.0.2.0/33",
        "[2001:db8::1]",
        "fe80::1%eth0",
        "*.192.0.2.1",
        "a..b",
        "-leading.example.test",
        "1.2.3",  # numeric last label: not a name, not an address
        "example.test..",
        "a" * 64 + ".test",
    ],
)
def test_rejects_invalid_hosts(raw: str) -> None:
    with pytest.raises(InvalidHost) as info:
        parse_host(raw)
    # Stable code for callers outside the loader.
    assert isinstance(info.value, InvalidRequest)
    assert info.value.code == "invalid_request"


def test_wildcard_matches_subdomains_at_any_depth_but_not_apex() -> None:
    spec = parse_host("*.example.test")
    assert spec.matches_name("a.example.test")
    assert spec.matches_name("a.b.c.example.test")
    assert not spec.matches_name("example.test")
    assert not spec.matches_name("badexample.test")
    assert not spec.matches_name("example.test.evil")


def test_cidr_contains_addresses() -> None:
    spec = parse_host("198.51.100.0/24")
    assert spec.matches_address(ipaddress.ip_address("198.51.100.200"))
    assert not spec.matches_address(ipaddress.ip_address("198.51.101.1"))
    assert not spec.matches_name("198.51.100.1")


def test_target_parsing_refuses_wildcards_and_networks() -> None:
    assert parse_target("API.Example.Test.") == "api.example.test"
    assert parse_target("192.0.2.1") == ipaddress.ip_address("192.0.2.1")
    with pytest.raises(InvalidHost):
        parse_target("*.example.test")
    with pytest.raises(InvalidHost):
        parse_target("192.0.2.0/24")
