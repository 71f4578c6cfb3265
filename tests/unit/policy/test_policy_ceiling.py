"""The operator's ceiling: host/port subsumption, image patterns, maxima, the excess listed."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from cleanroom.errors import PolicyConflict
from cleanroom.policy import (
    Ceiling,
    CeilingHost,
    ImagePattern,
    InvalidImageRef,
    PortRange,
    ceiling_excess,
    check_ceiling,
    compile_policy_text,
    host_within,
    parse_host,
    parse_image_pattern,
    parse_image_ref,
    parse_port_range,
    timeout_excess,
)
from cleanroom.policy.image import DebianImage, OciImage

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def within(inner: str, outer: str) -> bool:
    return host_within(parse_host(inner), None if outer == "*" else parse_host(outer))


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        # names and wildcards
        ("api.example.com", "api.example.com", True),
        ("API.Example.COM.", "api.example.com", True),  # both normalised
        ("api.example.com", "*.example.com", True),
        ("a.b.example.com", "*.example.com", True),  # any depth
        ("example.com", "*.example.com", False),  # the apex is not a subdomain
        ("badexample.com", "*.example.com", False),  # a suffix, not a label boundary
        ("example.com.evil.test", "*.example.com", False),
        ("*.example.com", "*.example.com", True),
        ("*.a.example.com", "*.example.com", True),
        ("*.example.com", "*.a.example.com", False),  # broader than the ceiling
        ("*.example.com", "example.com", False),  # a wildcard is never within a name
        ("*.example.com", "api.example.com", False),
        ("api.example.com", "other.example.com", False),
        ("*.com", "*.example.com", False),
        ("*.badexample.com", "*.example.com", False),
        # any name
        ("api.example.com", "*", True),
        ("*.example.com", "*", True),
        ("10.0.0.1", "*", False),  # '*' covers no address
        ("0.0.0.0/0", "*", False),
        # addresses
        ("10.1.0.0/16", "10.0.0.0/8", True),
        ("10.0.0.0/8", "10.0.0.0/8", True),
        ("10.0.0.0/8", "10.1.0.0/16", False),  # broader than the ceiling
        ("10.0.0.0/8", "0.0.0.0/0", True),
        ("0.0.0.0/0", "10.0.0.0/8", False),
        ("0.0.0.0/0", "0.0.0.0/0", True),
        ("10.2.3.4", "10.0.0.0/8", True),
        ("10.2.3.4", "10.2.3.4", True),
        ("10.2.3.4/32", "10.2.3.4", True),  # a /32 is the address
        ("11.0.0.0/8", "10.0.0.0/8", False),
        ("10.0.0.0/7", "10.0.0.0/8", False),
        ("192.168.0.0/16", "192.168.0.0/24", False),
        ("2001:db8::/48", "2001:db8::/32", True),
        ("2001:db8::/32", "2001:db8::/48", False),
        ("2001:db8::1", "::/0", True),
        # address families never mix (IPv4-mapped IPv6 is not IPv4)
        ("::ffff:10.0.0.0/104", "0.0.0.0/0", False),
        ("::ffff:10.0.0.1", "10.0.0.0/8", False),
        ("::/0", "0.0.0.0/0", False),
        ("10.0.0.0/8", "::/0", False),
        # names and addresses never cover each other
        ("10.0.0.1", "*.example.com", False),
        ("api.example.com", "0.0.0.0/0", False),
        ("api.example.com", "10.0.0.1", False),
    ],
)
def test_host_within(inner: str, outer: str, expected: bool) -> None:
    assert within(inner, outer) is expected


def test_cidr_subsumption_agrees_with_brute_force() -> None:
    """Every pair of small IPv4 blocks: within iff every address of one is in the other."""
    blocks = [
        ipaddress.ip_network(f"10.0.0.{base}/{prefix}")
        for prefix in range(28, 33)
        for base in range(0, 16, 2 ** (32 - prefix))
    ]
    for inner, outer in itertools.product(blocks, repeat=2):
        expected = all(address in outer for address in inner)
        assert within(str(inner), str(outer)) is expected, (inner, outer)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (443, PortRange(443, 443)),
        ("8000-8999", PortRange(8000, 8999)),
        (" 1 - 65535 ", PortRange(1, 65535)),
        ("22-22", PortRange(22, 22)),
    ],
)
def test_port_ranges(value: int | str, expected: PortRange) -> None:
    assert parse_port_range(value) == expected


@pytest.mark.parametrize("value", [0, 65536, "9-8", "1-", "-5", "a-b", "80", "0-10", "1-70000"])
def test_bad_port_ranges(value: int | str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_port_range(value)


def test_port_range_type() -> None:
    with pytest.raises(TypeError):
        parse_port_range(True)


def policy(text: str) -> object:
    return compile_policy_text(text, "cleanroom.yaml")


def allow_policy(*rules: tuple[str, list[int]]) -> str:
    lines = ["version: 1", "sandbox:", "  network:", "    allow:"]
    for host, ports in rules:
        lines.append(f"      - host: '{host}'")
        lines.append(f"        ports: {ports}")
    return "\n".join(lines) + "\n"


def hosts(*entries: tuple[str, tuple[PortRange, ...]]) -> Ceiling:
    return Ceiling(
        hosts=tuple(
            CeilingHost(None if host == "*" else parse_host(host), ports) for host, ports in entries
        )
    )


WEB = (PortRange(80, 80), PortRange(443, 443))


def test_rules_within_the_ceiling_pass() -> None:
    compiled = compile_policy_text(
        allow_policy(("api.example.com", [443]), ("10.1.2.0/24", [80, 443])), "cleanroom.yaml"
    )
    ceiling = hosts(("*.example.com", WEB), ("10.0.0.0/8", WEB))
    assert ceiling_excess(compiled, ceiling) == ()
    check_ceiling(compiled, ceiling)


def test_the_ports_of_a_rule_may_come_from_several_ceiling_entries() -> None:
    compiled = compile_policy_text(allow_policy(("api.example.com", [22, 443])), "c.yaml")
    ceiling = hosts(
        ("*.example.com", (PortRange(443, 443),)), ("api.example.com", (PortRange(1, 1024),))
    )
    assert ceiling_excess(compiled, ceiling) == ()


def test_excess_lists_every_uncovered_rule_and_port() -> None:
    compiled = compile_policy_text(
        allow_policy(
            ("example.com", [443]),  # the apex: not within *.example.com
            ("api.example.com", [443, 8443]),  # 8443 is not allowed
            ("0.0.0.0/0", [443]),  # broader than 10/8
            ("10.1.0.0/16", [443]),  # fine
        ),
        "cleanroom.yaml",
    )
    ceiling = hosts(("*.example.com", WEB), ("10.0.0.0/8", (PortRange(1, 1024),)))
    excess = ceiling_excess(compiled, ceiling)
    assert [e.requested for e in excess] == [
        "0.0.0.0/0:443",
        "api.example.com:443,8443",
        "example.com:443",
    ]
    assert all(e.limit == "policy.ceiling.hosts" for e in excess)
    assert "api.example.com:8443 is not covered" in excess[1].message
    assert excess[0].field == "sandbox.network.allow[0]"  # canonical order
    assert excess[0].allowed == ["*.example.com:80,443", "10.0.0.0/8:1-1024"]
    with pytest.raises(PolicyConflict) as info:
        check_ceiling(compiled, ceiling)
    assert info.value.code == "policy_conflict"
    assert [e["requested"] for e in info.value.details["excess"]] == [
        "0.0.0.0/0:443",
        "api.example.com:443,8443",
        "example.com:443",
    ]


def test_an_empty_host_ceiling_allows_no_egress_and_none_allows_any() -> None:
    compiled = compile_policy_text(allow_policy(("api.example.com", [443])), "cleanroom.yaml")
    assert len(ceiling_excess(compiled, Ceiling(hosts=()))) == 1
    assert ceiling_excess(compiled, Ceiling()) == ()
    # A policy without allow rules is within every ceiling; deny rules never need cover.
    deny_only = compile_policy_text(
        "version: 1\nsandbox:\n  network:\n    deny:\n      - host: 0.0.0.0/0\n", "c.yaml"
    )
    assert ceiling_excess(deny_only, Ceiling(hosts=())) == ()


def test_any_name_ceiling_covers_names_not_addresses() -> None:
    compiled = compile_policy_text(
        allow_policy(("*.example.com", [443]), ("192.0.2.1", [443])), "cleanroom.yaml"
    )
    excess = ceiling_excess(compiled, hosts(("*", WEB)))
    assert [e.requested for e in excess] == ["192.0.2.1:443"]


# -- images --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown", "kind"),
    [
        ("*", "*", "any"),
        ("alpine", "docker.io/library/alpine", "name"),
        (f"alpine@{DIGEST}", f"docker.io/library/alpine@{DIGEST}", "name"),
        ("Registry.Example:5000/team/app", "registry.example:5000/team/app", "name"),
        ("registry.example:5000/*", "registry.example:5000/*", "prefix"),
        ("registry.example/team/*", "registry.example/team/*", "prefix"),
        ("library/*", "docker.io/library/*", "prefix"),
        (DIGEST, DIGEST, "digest"),
        ("debian", "debian", "debian"),
        ("debian:bookworm", "debian:bookworm", "debian"),
    ],
)
def test_image_patterns_normalise(text: str, shown: str, kind: str) -> None:
    pattern = parse_image_pattern(text)
    assert (pattern.text, pattern.kind) == (shown, kind)


@pytest.mark.parametrize(
    "text",
    ["alpine:3.19", "registry.example/*/app", "regi*", "*/*", "debian:", "debian:Bad_Suite", "/*"],
)
def test_bad_image_patterns(text: str) -> None:
    with pytest.raises(InvalidImageRef):
        parse_image_pattern(text)


def oci(text: str) -> OciImage:
    return OciImage(parse_image_ref(text))


@pytest.mark.parametrize(
    ("pattern", "image", "expected"),
    [
        ("alpine", oci(f"alpine@{DIGEST}"), True),
        ("alpine", oci(f"docker.io/library/alpine:3@{DIGEST}"), True),
        ("alpine", oci(f"alpinex@{DIGEST}"), False),
        ("alpine", oci(f"other.example/library/alpine@{DIGEST}"), False),  # another registry
        (f"alpine@{DIGEST}", oci(f"alpine@{OTHER}"), False),
        (f"alpine@{DIGEST}", oci(f"alpine@{DIGEST}"), True),
        ("registry.example/team/*", oci(f"registry.example/team/app@{DIGEST}"), True),
        ("registry.example/team/*", oci(f"registry.example/team/a/b@{DIGEST}"), True),
        ("registry.example/team/*", oci(f"registry.example/teamx/app@{DIGEST}"), False),
        ("registry.example/team/*", oci(f"registry.example/other@{DIGEST}"), False),
        ("registry.example/*", oci(f"registry.example/any/thing@{DIGEST}"), True),
        ("registry.example/*", oci(f"registry.example.evil/x@{DIGEST}"), False),
        ("registry.example/*", oci(DIGEST), False),  # an imported image has no registry
        (DIGEST, oci(DIGEST), True),
        (DIGEST, oci(f"registry.example/app@{DIGEST}"), True),  # the same content
        (DIGEST, oci(OTHER), False),
        ("*", oci(DIGEST), True),
        ("*", DebianImage("bookworm", ()), False),
        ("debian", DebianImage(None, ("git",)), True),
        ("debian:bookworm", DebianImage("bookworm", ()), True),
        ("debian:bookworm", DebianImage("trixie", ()), False),
        ("debian:bookworm", DebianImage(None, ()), False),  # the host's release is not named
        ("debian", oci(DIGEST), False),
    ],
)
def test_image_pattern_matches(pattern: str, image: OciImage | DebianImage, expected: bool) -> None:
    assert parse_image_pattern(pattern).matches(image) is expected


def test_image_excess_covers_the_policy_and_the_override() -> None:
    compiled = compile_policy_text(
        f"version: 1\nsandbox:\n  image:\n    ref: other.example/app@{DIGEST}\n", "c.yaml"
    )
    ceiling = Ceiling(images=(parse_image_pattern("registry.example/*"),))
    excess = ceiling_excess(
        compiled, ceiling, image_override=parse_image_ref(f"evil.example/x@{DIGEST}")
    )
    assert [(e.field, e.limit) for e in excess] == [
        ("sandbox.image", "policy.ceiling.images"),
        ("options.image", "policy.ceiling.images"),
    ]
    assert excess[0].allowed == ["registry.example/*"]
    # The built-in image needs no pattern, even under an empty list.
    builtin = compile_policy_text("version: 1\n", "c.yaml")
    assert ceiling_excess(builtin, Ceiling(images=())) == ()
    assert ceiling.images == (ImagePattern("registry.example/*", "prefix", "registry.example"),)


# -- maxima --------------------------------------------------------------------------


def test_resource_maxima_list_every_excess() -> None:
    compiled = compile_policy_text(
        "version: 1\nsandbox:\n  resources: {vcpus: 4, memory_mib: 8192, disk_mib: 1024}\n",
        "c.yaml",
    )
    ceiling = Ceiling(max_vcpus=2, max_memory_mib=4096, max_disk_mib=1024)
    excess = ceiling_excess(compiled, ceiling)
    assert [(e.field, e.requested, e.allowed) for e in excess] == [
        ("sandbox.resources.vcpus", 4, 2),
        ("sandbox.resources.memory_mib", 8192, 4096),
    ]
    assert ceiling_excess(compiled, Ceiling()) == ()


def test_timeout_excess() -> None:
    ceiling = Ceiling(max_timeout_seconds=60)
    assert timeout_excess(60, ceiling) is None
    excess = timeout_excess(61, ceiling)
    assert excess is not None
    assert (excess.field, excess.limit, excess.allowed) == (
        "timeout_seconds",
        "policy.ceiling.max.timeout_seconds",
        60,
    )
    assert timeout_excess(10**6, Ceiling()) is None
