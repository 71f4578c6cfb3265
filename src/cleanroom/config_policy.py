"""The runtime config's ``policy`` section: what the operator allows repository policies.

::

    policy:
      isolation: any                   # any | kvm: the weakest guest isolation any context gets
      ceiling:                         # optional; each part optional (absent: no limit)
        hosts:                         # what allow rules may name ([]: no egress at all)
          - host: "*.example.com"      # name, *.wildcard, IP, CIDR, or "*" (every name)
            ports: [443, "8000-8999"]  # required: ports and inclusive ranges
        images: ["registry.example/*", "debian"]   # see cleanroom.policy.imagepattern
        max: {vcpus: 2, memory_mib: 2048, disk_mib: 8192, timeout_seconds: 600}

A repository policy asking beyond the ceiling is refused at launch with
``policy_conflict`` listing the excess (see :mod:`cleanroom.policy.ceiling`); a
run asking a longer timeout than ``max.timeout_seconds`` likewise. The built-in
image is always allowed, and so is ``images.default`` (the operator's own choice):
``images`` judges what a policy or a launch's ``--image`` names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from cleanroom._yaml import (
    YamlEntry,
    YamlNode,
    YamlScalar,
    join_index,
    read_choice,
    read_mapping,
    read_sequence,
    read_str,
)
from cleanroom.config_reader import SectionReader, is_null

if TYPE_CHECKING:
    from cleanroom.policy.ceiling import Ceiling, CeilingHost, PortRange
    from cleanroom.policy.imagepattern import ImagePattern
    from cleanroom.policy.isolation import IsolationRequirement

# The policy package (and idna) load only when a config has this section: the
# parsing functions below import what they use.
# ruff: noqa: PLC0415

__all__ = ["POLICY_KEYS", "PolicyConfig", "read_policy_section"]

T = TypeVar("T")

POLICY_KEYS = ("isolation", "ceiling")
_CEILING_KEYS = ("hosts", "images", "max")
_MAX_KEYS = ("vcpus", "memory_mib", "disk_mib", "timeout_seconds")
_MAX_TIMEOUT = 86400.0


@dataclass(frozen=True)
class PolicyConfig:
    """The operator's word over repository policies."""

    isolation: IsolationRequirement = "any"
    """The weakest isolation any context gets (a policy may ask for more)."""
    ceiling: Ceiling | None = None
    """None: repository policies are not capped (beyond ``images.max``)."""


def read_policy_section(reader: SectionReader, section: dict[str, YamlEntry]) -> PolicyConfig:
    """Parse the ``policy`` section's entries (problems go to ``reader.problems``)."""
    from cleanroom.policy.isolation import ISOLATION_REQUIREMENTS

    isolation: IsolationRequirement = "any"
    entry = section.get("isolation")
    if entry is not None and not is_null(entry.value):
        value = read_choice(
            entry.value, "policy.isolation", reader.problems, ISOLATION_REQUIREMENTS
        )
        isolation = next((r for r in ISOLATION_REQUIREMENTS if r == value), "any")
    entry = section.get("ceiling")
    if entry is None or is_null(entry.value):
        return PolicyConfig(isolation=isolation)
    ceiling = read_mapping(entry.value, "policy.ceiling", reader.problems, allowed=_CEILING_KEYS)
    return PolicyConfig(isolation=isolation, ceiling=_read_ceiling(reader, ceiling or {}))


def _read_ceiling(reader: SectionReader, entries: dict[str, YamlEntry]) -> Ceiling:
    from cleanroom.policy.ceiling import Ceiling

    maxima = reader.section(entries, "max", "policy.ceiling", _MAX_KEYS)
    timeout: float | None = None
    if "timeout_seconds" in maxima:
        timeout = reader.seconds(maxima, "timeout_seconds", "policy.ceiling.max", _MAX_TIMEOUT)
        if timeout > _MAX_TIMEOUT:
            reader.problems.add(
                maxima["timeout_seconds"].value.mark,
                "policy.ceiling.max.timeout_seconds",
                f"must be at most {_MAX_TIMEOUT:g}",
            )
    return Ceiling(
        hosts=_read_hosts(reader, entries.get("hosts")),
        images=_read_images(reader, entries.get("images")),
        max_vcpus=_optional_int(reader, maxima, "vcpus"),
        max_memory_mib=_optional_int(reader, maxima, "memory_mib"),
        max_disk_mib=_optional_int(reader, maxima, "disk_mib"),
        max_timeout_seconds=timeout,
    )


def _optional_int(reader: SectionReader, maxima: dict[str, YamlEntry], key: str) -> int | None:
    if key not in maxima:
        return None
    return reader.integer(maxima, key, "policy.ceiling.max", 0, minimum=1)


def _read_list(
    reader: SectionReader,
    entry: YamlEntry | None,
    path: str,
    read_one: Callable[[YamlNode, str], T | None],
) -> tuple[T, ...] | None:
    """The list at ``path`` (None: absent or null), each item read by ``read_one(item,
    its path)``; an item it returns None for (a problem, reported) is left out."""
    if entry is None or is_null(entry.value):
        return None
    items = read_sequence(entry.value, path, reader.problems) or ()
    found = (read_one(item, join_index(path, index)) for index, item in enumerate(items))
    return tuple(value for value in found if value is not None)


def _read_hosts(reader: SectionReader, entry: YamlEntry | None) -> tuple[CeilingHost, ...] | None:
    from cleanroom.policy.ceiling import ANY_NAME, CeilingHost
    from cleanroom.policy.hosts import InvalidHost, parse_host

    def read_one(item: YamlNode, path: str) -> CeilingHost | None:
        rule = read_mapping(item, path, reader.problems, allowed=("host", "ports"))
        if rule is None:
            return None
        host_entry, ports_entry = rule.get("host"), rule.get("ports")
        if host_entry is None or ports_entry is None:
            missing = "host" if host_entry is None else "ports"
            reader.problems.add(item.mark, f"{path}.{missing}", "required key is missing")
            return None
        text = read_str(host_entry.value, f"{path}.host", reader.problems)
        ports = _read_ports(reader, ports_entry.value, f"{path}.ports")
        if text is None or ports is None:
            return None
        if text.strip() == ANY_NAME:
            return CeilingHost(None, ports)
        try:
            return CeilingHost(parse_host(text), ports)
        except InvalidHost as exc:
            reader.problems.add(host_entry.value.mark, f"{path}.host", exc.message)
            return None

    return _read_list(reader, entry, "policy.ceiling.hosts", read_one)


def _read_ports(reader: SectionReader, node: YamlNode, path: str) -> tuple[PortRange, ...] | None:
    from cleanroom.policy.ceiling import parse_port_range

    items = read_sequence(node, path, reader.problems)
    if items is None:
        return None
    if not items:
        reader.problems.add(node.mark, path, "must list at least one port or range")
        return None
    ranges: list[PortRange] = []
    for index, item in enumerate(items):
        value = item.value if isinstance(item, YamlScalar) else None
        try:
            ranges.append(parse_port_range(value))
        except (TypeError, ValueError) as exc:
            reader.problems.add(item.mark, join_index(path, index), str(exc))
            return None
    return tuple(sorted(set(ranges)))


def _read_images(reader: SectionReader, entry: YamlEntry | None) -> tuple[ImagePattern, ...] | None:
    from cleanroom.policy.image import InvalidImageRef
    from cleanroom.policy.imagepattern import parse_image_pattern

    def read_one(item: YamlNode, path: str) -> ImagePattern | None:
        text = read_str(item, path, reader.problems)
        if text is None:
            return None
        try:
            return parse_image_pattern(text)
        except InvalidImageRef as exc:
            reader.problems.add(item.mark, path, exc.message)
            return None

    return _read_list(reader, entry, "policy.ceiling.images", read_one)
