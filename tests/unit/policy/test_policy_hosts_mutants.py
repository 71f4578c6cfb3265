"""Host normalisation pinned where a mutation check found it loose: each refusal
names its reason (and quotes the input), the name-length cap at its limit and one
past it, UTS #46 mapping, and the specificity order the decision relies on."""

from __future__ import annotations

import pytest

from cleanroom.policy import InvalidHost, parse_host
from cleanroom.policy.hosts import parse_target


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "host must not be empty"),
        ("   ", "host must not be empty"),
        ("https://example.test", "give a host, not a URL (no scheme)"),
        ("exa mple.test", "a host must not contain whitespace"),
        ("[2001:db8::1]", "write IPv6 addresses without brackets"),
        ("[2001:db8::1", "write IPv6 addresses without brackets"),
        ("2001:db8::1]", "write IPv6 addresses without brackets"),
        ("192.0.2.0/33", "is not a valid CIDR block"),
        ("198.51.100.1/24", "is not a valid CIDR block"),
        ("192.0.2.0/24/x", "is not a valid CIDR block"),
        ("fe80::1%eth0", "IPv6 zone indexes are not supported"),
        ("example.test/path", "a host must not contain a path"),
        ("example.test:443", "give ports in 'ports', not as host:port"),
        ("example.test..", "has an empty label"),
        ("foo.*.com", "'*' is only allowed as a whole left-most label"),
        ("*", "'*' is only allowed as a whole left-most label"),
        (".", "is not a valid host"),
        ("*.192.0.2.1", "a wildcard must be followed by a host name, not an address"),
        ("foo_bar.example.test", "is not a valid host name (Codepoint U+005F"),
        ("a\u200db.test", "is not a valid host name ("),
        ("1.2.3", "is neither an IP address nor a host name"),
    ],
)
def test_each_refusal_names_its_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidHost) as info:
        parse_host(raw)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "raw", ["foo_bar.example.test", "1.2.3", "example.test:443", "a" * 64 + ".test"]
)
def test_refusals_quote_the_input_as_given(raw: str) -> None:
    with pytest.raises(InvalidHost) as info:
        parse_host(raw)
    assert repr(raw) in str(info.value)


def test_target_refusals_name_their_reason() -> None:
    with pytest.raises(InvalidHost, match="a wildcard is not allowed here"):
        parse_target("*.example.test")
    with pytest.raises(InvalidHost, match="a target is one address or name, not a network"):
        parse_target("192.0.2.0/24")


def _name_of_length(length: int) -> str:
    """A valid DNS name of exactly ``length`` characters (63-character labels)."""
    labels: list[str] = []
    remaining = length
    while remaining > 0:
        size = min(63, remaining - 2 if remaining > 64 else remaining)
        labels.append("a" * size)
        remaining -= size + 1
    name = ".".join(labels)[:-1] + "x"  # the last label must not be all digits
    assert len(name) == length
    return name


def test_name_length_cap_at_the_limit_and_one_past() -> None:
    at_limit = _name_of_length(253)
    assert parse_host(at_limit).text == at_limit
    past = _name_of_length(254)
    # idna refuses it first ("Domain too long"); our own cap is a second line.
    with pytest.raises(InvalidHost, match="is not a valid host name"):
        parse_host(past)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.test", "example.test"),  # full-width
        ("example.test\u3002", "example.test"),  # ideographic full stop as the root label
        ("example\u3002test", "example.test"),
    ],
)
def test_uts46_mapping(raw: str, expected: str) -> None:
    assert parse_host(raw).text == expected


def test_specificity_exact_beats_every_wildcard_and_network() -> None:
    exact = [parse_host(raw).specificity() for raw in ("example.test", "192.0.2.1", "2001:db8::1")]
    assert exact == [(1, 0)] * 3
    assert parse_host("*.example.test").specificity() == (0, 2)
    assert parse_host("*.a.b.example.test").specificity() == (0, 4)
    assert parse_host("2001:db8::/127").specificity() == (0, 127)
    assert parse_host("192.0.2.0/31").specificity() == (0, 31)
    assert max(parse_host("192.0.2.0/31").specificity(), *exact) == (1, 0)


def test_an_empty_host_message_is_exact() -> None:
    with pytest.raises(InvalidHost) as info:
        parse_host(" ")
    assert str(info.value) == "invalid_request: host must not be empty"
