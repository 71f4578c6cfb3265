"""The ``cleanroom.yaml`` schema (version 1), checked node by node with source locations.

::

    version: 1                      # required, exactly 1
    sandbox:
      network:
        default: deny               # optional; only "deny" is accepted
        allow:                      # optional list
          - host: api.example.test  # name, *.wildcard, IP or CIDR
            ports: [443]            # optional, default [80, 443]
            reason: "why"           # optional (null: none)
        deny:                       # optional list
          - host: evil.example.test
            ports: [22]             # optional; omitted or null: every port
      image: {ref: ...} | {debian: {suite, packages}}   # optional (see schema_sandbox)
      resources: {vcpus, memory_mib, disk_mib}          # optional (see schema_sandbox)
      isolation: any | kvm                              # optional (see schema_sandbox)

:func:`read_policy` walks the located YAML tree and records every problem it
finds (it does not stop at the first); rules come back in file order with
hosts normalised and ports sorted and de-duplicated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cleanroom._yaml import (
    Problems,
    YamlEntry,
    YamlNode,
    YamlScalar,
    describe,
    join_index,
    join_key,
    parse_yaml,
    read_int,
    read_mapping,
    read_sequence,
    read_str,
)
from cleanroom.policy.hosts import HostSpec, InvalidHost, parse_host
from cleanroom.policy.image import ImageSpec, Resources
from cleanroom.policy.isolation import IsolationRequirement
from cleanroom.policy.model import DEFAULT_ALLOW_PORTS, AllowRule, DenyRule
from cleanroom.policy.schema_sandbox import read_image, read_isolation, read_resources

__all__ = ["PolicyDocument", "read_policy"]

_Rule = TypeVar("_Rule", AllowRule, DenyRule)

SUPPORTED_VERSION = 1
_MIN_PORT, _MAX_PORT = 1, 65535


@dataclass(frozen=True)
class PolicyDocument:
    """The rules of a valid policy document, in file order."""

    allow: tuple[AllowRule, ...]
    deny: tuple[DenyRule, ...]
    image: ImageSpec | None = None
    resources: Resources = field(default_factory=Resources)
    isolation: IsolationRequirement | None = None


def read_policy(text: str, problems: Problems) -> PolicyDocument | None:
    """Parse and validate policy ``text``; ``None`` (with ``problems`` filled) when invalid."""
    root = parse_yaml(text, problems)
    if problems:
        return None
    if root is None:
        problems.add_start("the file is empty; a policy needs at least 'version: 1'")
        return None
    document = _read_root(root, problems)
    return None if problems else document


def _read_root(root: YamlNode, problems: Problems) -> PolicyDocument | None:
    entries = read_mapping(root, "", problems, allowed=("version", "sandbox"))
    if entries is None:
        return None
    version = entries.get("version")
    if version is None:
        problems.add(root.mark, "version", "required key is missing (write 'version: 1')")
    else:
        value = read_int(version.value, "version", problems)
        if value is not None and value != SUPPORTED_VERSION:
            problems.add(
                version.value.mark,
                "version",
                f"unsupported policy version {value} (only {SUPPORTED_VERSION} is supported)",
            )
    allow: tuple[AllowRule, ...] = ()
    deny: tuple[DenyRule, ...] = ()
    image: ImageSpec | None = None
    resources = Resources()
    isolation: IsolationRequirement | None = None
    sandbox = entries.get("sandbox")
    if sandbox is not None:
        sandbox_entries = (
            read_mapping(
                sandbox.value,
                "sandbox",
                problems,
                allowed=("network", "image", "resources", "isolation"),
            )
            or {}
        )
        network = sandbox_entries.get("network")
        if network is not None:
            allow, deny = _read_network(network.value, "sandbox.network", problems)
        image_entry = sandbox_entries.get("image")
        if image_entry is not None and not _is_null(image_entry.value):
            image = read_image(image_entry.value, "sandbox.image", problems)
        resources_entry = sandbox_entries.get("resources")
        if resources_entry is not None and not _is_null(resources_entry.value):
            resources = (
                read_resources(resources_entry.value, "sandbox.resources", problems) or resources
            )
        isolation_entry = sandbox_entries.get("isolation")
        if isolation_entry is not None and not _is_null(isolation_entry.value):
            isolation = read_isolation(isolation_entry.value, "sandbox.isolation", problems)
    return PolicyDocument(allow, deny, image, resources, isolation)


def _read_network(
    node: YamlNode, path: str, problems: Problems
) -> tuple[tuple[AllowRule, ...], tuple[DenyRule, ...]]:
    entries = read_mapping(node, path, problems, allowed=("default", "allow", "deny"))
    if entries is None:
        return (), ()
    default = entries.get("default")
    if default is not None:
        _read_default(default.value, join_key(path, "default"), problems)
    allow = _read_rules(entries, "allow", path, problems, _read_allow)
    deny = _read_rules(entries, "deny", path, problems, _read_deny)
    return allow, deny


def _read_rules(
    entries: dict[str, YamlEntry],
    key: str,
    path: str,
    problems: Problems,
    read_rule: Callable[[YamlNode, str, Problems], _Rule | None],
) -> tuple[_Rule, ...]:
    """The valid rules of the list under ``key`` (invalid ones are recorded in ``problems``)."""
    entry = entries.get(key)
    if entry is None:
        return ()
    list_path = join_key(path, key)
    rules = (
        read_rule(item, join_index(list_path, index), problems)
        for index, item in enumerate(read_sequence(entry.value, list_path, problems) or ())
    )
    return tuple(rule for rule in rules if rule is not None)


def _is_null(node: YamlNode) -> bool:
    """An explicit ``null``: accepted as "not given" where the canonical form writes it."""
    return isinstance(node, YamlScalar) and node.value is None


def _read_default(node: YamlNode, path: str, problems: Problems) -> None:
    value = getattr(node, "value", None)
    if value == "deny":
        return
    if value == "allow":
        problems.add(
            node.mark,
            path,
            "'allow' is not accepted: cleanroom requires deny-by-default egress; "
            "list permitted destinations under sandbox.network.allow instead",
        )
        return
    problems.add(node.mark, path, f"expected 'deny', got {describe(node)}")


def _read_allow(node: YamlNode, path: str, problems: Problems) -> AllowRule | None:
    entries = read_mapping(node, path, problems, allowed=("host", "ports", "reason"))
    if entries is None:
        return None
    host = _read_host(node, entries.get("host"), path, problems)
    ports: tuple[int, ...] | None = DEFAULT_ALLOW_PORTS
    ports_entry = entries.get("ports")
    if ports_entry is not None:
        ports = _read_ports(
            ports_entry.value,
            join_key(path, "ports"),
            problems,
            empty_hint="omit 'ports' to allow the default [80, 443]",
        )
    reason: str | None = None
    reason_entry = entries.get("reason")
    if reason_entry is not None and not _is_null(reason_entry.value):
        reason = read_str(reason_entry.value, join_key(path, "reason"), problems)
        reason = reason.strip() if reason is not None else None
    if host is None or ports is None:
        return None
    return AllowRule(host.text, host.kind, ports, reason)


def _read_deny(node: YamlNode, path: str, problems: Problems) -> DenyRule | None:
    entries = read_mapping(node, path, problems, allowed=("host", "ports"))
    if entries is None:
        return None
    host = _read_host(node, entries.get("host"), path, problems)
    ports: tuple[int, ...] | None = None
    ports_entry = entries.get("ports")
    if ports_entry is not None and not _is_null(ports_entry.value):
        ports = _read_ports(
            ports_entry.value,
            join_key(path, "ports"),
            problems,
            empty_hint="omit 'ports' (or write null) to deny every port",
        )
        if ports is None:
            return None
    if host is None:
        return None
    return DenyRule(host.text, host.kind, ports)


def _read_host(
    rule: YamlNode, entry: YamlEntry | None, path: str, problems: Problems
) -> HostSpec | None:
    host_path = join_key(path, "host")
    if entry is None:
        problems.add(rule.mark, host_path, "required key is missing")
        return None
    value_node = entry.value
    text = read_str(value_node, host_path, problems)
    if text is None:
        return None
    try:
        return parse_host(text)
    except InvalidHost as exc:
        problems.add(value_node.mark, host_path, exc.message)
        return None


def _read_ports(
    node: YamlNode, path: str, problems: Problems, *, empty_hint: str
) -> tuple[int, ...] | None:
    items = read_sequence(node, path, problems)
    if items is None:
        return None
    if not items:
        problems.add(node.mark, path, f"must list at least one port ({empty_hint})")
        return None
    ports: set[int] = set()
    ok = True
    for index, item in enumerate(items):
        port = read_int(
            item, join_index(path, index), problems, minimum=_MIN_PORT, maximum=_MAX_PORT
        )
        if port is None:
            ok = False
        else:
            ports.add(port)
    return tuple(sorted(ports)) if ok else None
