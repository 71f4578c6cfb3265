"""The compiled policy's values: rules, the compiled policy itself, and a decision.

All values are immutable. A :class:`CompiledPolicy` holds its rules in
canonical order (sorted), so the same rules written differently compile to
equal values and the same :attr:`CompiledPolicy.policy_hash`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cleanroom.policy.hosts import HostKind, HostSpec, IPAddress, IPNetwork
from cleanroom.policy.image import ImageSpec, Resources
from cleanroom.policy.isolation import IsolationRequirement

__all__ = [
    "DEFAULT_ALLOW_PORTS",
    "AllowRule",
    "CompiledPolicy",
    "Decision",
    "DenyRule",
    "rule_label",
]

DEFAULT_ALLOW_PORTS: tuple[int, ...] = (80, 443)
"""Ports an allow rule permits when it names none."""


def rule_label(host: str, ports: tuple[int, ...] | None) -> str:
    """``host`` or ``host:p1,p2`` (IPv6 hosts in brackets when ports follow)."""
    if not ports:
        return host
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{','.join(str(port) for port in ports)}"


@dataclass(frozen=True)
class _HostRule:
    """What every rule has: the host it is about, and how that host is written."""

    host: str
    kind: HostKind

    @property
    def spec(self) -> HostSpec:
        """The host as a matcher."""
        return HostSpec(self.host, self.kind)

    @property
    def network(self) -> IPNetwork | None:
        """The address block for ``ip``/``cidr`` rules, else ``None``."""
        return self.spec.network


@dataclass(frozen=True)
class AllowRule(_HostRule):
    """Egress to ``host`` on ``ports`` (sorted, unique) is allowed."""

    ports: tuple[int, ...]
    reason: str | None = None

    def label(self) -> str:
        """``host:ports`` as shown in decisions and the CLI."""
        return rule_label(self.host, self.ports)

    def to_dict(self) -> dict[str, Any]:
        """The rule's canonical JSON form."""
        return {"host": self.host, "ports": list(self.ports), "reason": self.reason}


@dataclass(frozen=True)
class DenyRule(_HostRule):
    """Egress to ``host`` is denied on ``ports``, or on every port when ``ports`` is ``None``."""

    ports: tuple[int, ...] | None = None

    def covers_port(self, port: int) -> bool:
        """Whether the rule applies to ``port``."""
        return self.ports is None or port in self.ports

    def label(self) -> str:
        """``host`` or ``host:ports`` as shown in decisions and the CLI."""
        return rule_label(self.host, self.ports)

    def to_dict(self) -> dict[str, Any]:
        """The rule's canonical JSON form (``ports: null`` means every port)."""
        return {"host": self.host, "ports": None if self.ports is None else list(self.ports)}


@dataclass(frozen=True)
class Decision:
    """Whether egress to a target is allowed, and which rule decided it.

    ``rule`` reads e.g. ``"deny[0] evil.example.test"``,
    ``"allow[1] *.example.test:443"`` or ``"default deny"``; indexes refer to
    the compiled (canonical) rule order.
    """

    allowed: bool
    rule: str


@dataclass(frozen=True)
class CompiledPolicy:
    """A validated, normalised policy in canonical form.

    ``source`` and ``warnings`` describe where it came from and are not part of
    :meth:`canonical_json` or :attr:`policy_hash`. ``image`` (``None``: the
    built-in image), ``resources`` and ``isolation`` (``None``: not required)
    are, but only when set, so policies without them keep the hashes they
    always had.
    """

    allow: tuple[AllowRule, ...]
    deny: tuple[DenyRule, ...]
    source: Path = field(compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    version: int = 1
    default: Literal["deny"] = "deny"
    image: ImageSpec | None = None
    resources: Resources = field(default_factory=Resources)
    isolation: IsolationRequirement | None = None

    def to_dict(self) -> dict[str, Any]:
        """The canonical dictionary (what is hashed)."""
        sandbox: dict[str, Any] = {
            "network": {
                "default": self.default,
                "allow": [rule.to_dict() for rule in self.allow],
                "deny": [rule.to_dict() for rule in self.deny],
            }
        }
        if self.image is not None:
            sandbox["image"] = self.image.to_dict()
        if not self.resources.is_default:
            sandbox["resources"] = self.resources.to_dict()
        if self.isolation is not None:
            sandbox["isolation"] = self.isolation
        return {"version": self.version, "sandbox": sandbox}

    def canonical_json(self) -> str:
        """Sorted-key, whitespace-free JSON of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def policy_hash(self) -> str:
        """SHA-256 (lowercase hex, no prefix) of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()

    def has_hash(self, expected: str) -> bool:
        """Whether ``expected`` (as a caller pins it: hex, ``sha256:`` prefix and case
        ignored) is :attr:`policy_hash`."""
        return expected.strip().lower().removeprefix("sha256:") == self.policy_hash

    @property
    def allowed_names(self) -> tuple[AllowRule, ...]:
        """Allow rules for DNS names (exact and wildcard), for the resolver and firewall."""
        return tuple(rule for rule in self.allow if rule.kind in ("name", "wildcard"))

    @property
    def allowed_networks(self) -> tuple[AllowRule, ...]:
        """Allow rules for IP addresses and CIDR blocks."""
        return tuple(rule for rule in self.allow if rule.kind in ("ip", "cidr"))

    def name_is_denied(self, name: str) -> bool:
        """Whether a deny rule without ports covers the normalised DNS ``name``.

        Such a name may not even be resolved for the guest.
        """
        return any(rule.ports is None and rule.spec.matches_name(name) for rule in self.deny)

    def address_is_denied(self, address: IPAddress, port: int) -> bool:
        """Whether an ``ip``/``cidr`` deny rule covers ``address`` on ``port``."""
        return any(
            rule.covers_port(port) and rule.spec.matches_address(address) for rule in self.deny
        )
