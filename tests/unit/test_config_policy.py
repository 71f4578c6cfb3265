"""The runtime config's ``policy`` section: isolation floor and ceiling, parsed strictly."""

from __future__ import annotations

import pytest

from cleanroom.config import PolicyConfig, RuntimeConfig, parse_config_text
from cleanroom.errors import ConfigInvalid
from cleanroom.policy import PortRange

DIGEST = "sha256:" + "c" * 64


def test_defaults_have_no_ceiling_and_no_floor() -> None:
    assert RuntimeConfig().policy == PolicyConfig()
    assert parse_config_text("policy: {}\n", "config.yaml").policy == PolicyConfig()
    assert PolicyConfig().isolation == "any"
    assert PolicyConfig().ceiling is None


def test_every_key() -> None:
    config = parse_config_text(
        f"""\
policy:
  isolation: kvm
  ceiling:
    hosts:
      - host: "*.Example.COM"
        ports: [443, "8000-8999", 443]
      - host: 10.0.0.0/8
        ports: ["1-65535"]
      - host: "*"
        ports: [80]
    images: ["registry.example/*", "alpine@{DIGEST}", debian]
    max: {{vcpus: 2, memory_mib: 2048, disk_mib: 4096, timeout_seconds: 600}}
""",
        "config.yaml",
    )
    policy = config.policy
    assert policy.isolation == "kvm"
    ceiling = policy.ceiling
    assert ceiling is not None
    assert ceiling.hosts is not None
    assert [h.label for h in ceiling.hosts] == [
        "*.example.com:443,8000-8999",
        "10.0.0.0/8:1-65535",
        "*:80",
    ]
    assert ceiling.hosts[0].ports == (PortRange(443, 443), PortRange(8000, 8999))
    assert ceiling.images is not None
    assert [p.text for p in ceiling.images] == [
        "registry.example/*",
        f"docker.io/library/alpine@{DIGEST}",
        "debian",
    ]
    assert (ceiling.max_vcpus, ceiling.max_memory_mib, ceiling.max_disk_mib) == (2, 2048, 4096)
    assert ceiling.max_timeout_seconds == 600.0
    assert ceiling.to_dict()["max"] == {
        "vcpus": 2,
        "memory_mib": 2048,
        "disk_mib": 4096,
        "timeout_seconds": 600.0,
    }


def test_absent_parts_do_not_limit_and_empty_lists_allow_nothing() -> None:
    ceiling = parse_config_text("policy:\n  ceiling: {}\n", "c.yaml").policy.ceiling
    assert ceiling is not None
    assert (ceiling.hosts, ceiling.images, ceiling.max_vcpus) == (None, None, None)
    empty = parse_config_text("policy:\n  ceiling: {hosts: [], images: []}\n", "c.yaml")
    assert empty.policy.ceiling is not None
    assert (empty.policy.ceiling.hosts, empty.policy.ceiling.images) == ((), ())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("policy: {isolation: tcg}\n", "policy.isolation: expected one of 'any', 'kvm'"),
        ("policy: {ceiling: {bogus: 1}}\n", "policy.ceiling.bogus: unknown key"),
        ("policy: {ceiling: {hosts: [{host: a.example}]}}\n", "policy.ceiling.hosts[0].ports:"),
        ("policy: {ceiling: {hosts: [{ports: [1]}]}}\n", "policy.ceiling.hosts[0].host:"),
        (
            "policy: {ceiling: {hosts: [{host: 'http://x', ports: [1]}]}}\n",
            "policy.ceiling.hosts[0].host: 'http://x': give a host, not a URL",
        ),
        (
            "policy: {ceiling: {hosts: [{host: a.example, ports: []}]}}\n",
            "policy.ceiling.hosts[0].ports: must list at least one port",
        ),
        (
            "policy: {ceiling: {hosts: [{host: a.example, ports: ['9-8']}]}}\n",
            "policy.ceiling.hosts[0].ports[0]:",
        ),
        (
            "policy: {ceiling: {hosts: [{host: a.example, ports: [true]}]}}\n",
            "policy.ceiling.hosts[0].ports[0]: expected a port or a range",
        ),
        (
            "policy: {ceiling: {hosts: [{host: a.example, ports: [70000]}]}}\n",
            "policy.ceiling.hosts[0].ports[0]:",
        ),
        (
            "policy: {ceiling: {hosts: [{host: a.example, ports: [1], reason: x}]}}\n",
            "policy.ceiling.hosts[0].reason: unknown key",
        ),
        ("policy: {ceiling: {images: ['alpine:3']}}\n", "policy.ceiling.images[0]:"),
        ("policy: {ceiling: {max: {vcpus: 0}}}\n", "policy.ceiling.max.vcpus:"),
        ("policy: {ceiling: {max: {cpus: 1}}}\n", "policy.ceiling.max.cpus: unknown key"),
        (
            "policy: {ceiling: {max: {timeout_seconds: 100000}}}\n",
            "policy.ceiling.max.timeout_seconds: must be at most 86400",
        ),
        ("policy: {ceiling: {max: {timeout_seconds: 0}}}\n", "policy.ceiling.max.timeout_seconds"),
        ("policy: {ceiling: {hosts: {host: x}}}\n", "policy.ceiling.hosts: expected a list"),
    ],
)
def test_invalid_values_are_located(text: str, expected: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config_text(text, "config.yaml")
    problems = info.value.details["problems"]
    assert any(expected in p for p in problems), problems
