"""The operator's ceiling over repository policies: what a policy may ask for at most.

A repository's policy asks; the runtime config's ``policy.ceiling`` decides.
:func:`ceiling_excess` lists everything a compiled policy (and a launch's
image override) asks beyond the ceiling; :func:`check_ceiling` refuses such a
policy with ``policy_conflict`` whose ``details['excess']`` lists it all.

Coverage is decided per allow rule and per port, strictly: a rule is admitted
only when, for each of its ports, one ceiling entry covers its whole host on
that port (different ports may be covered by different entries):

- a name is covered by the same name, by a wildcard over one of its parent
  domains (``api.example.com`` within ``*.example.com``), or by ``*``;
- a wildcard is covered by an equal or broader wildcard
  (``*.a.example.com`` within ``*.example.com``), or by ``*``; never by a
  name, and ``*.example.com`` never covers the apex ``example.com``;
- an IP or CIDR is covered by a CIDR (or IP) of the same address family that
  contains it (``10.1.0.0/16`` within ``10.0.0.0/8``); names never cover
  addresses, nor addresses names (a name may resolve anywhere);
- ``*`` covers every name and wildcard but no address: write ``0.0.0.0/0``
  (and ``::/0``) to allow every address.

A CIDR that only several ceiling blocks cover together is refused: the
check errs on the side of refusing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cleanroom.errors import PolicyConflict
from cleanroom.policy.hosts import HostSpec
from cleanroom.policy.image import DebianImage, ImageRef, ImageSpec, OciImage
from cleanroom.policy.imagepattern import ImagePattern
from cleanroom.policy.model import AllowRule, CompiledPolicy, rule_label

__all__ = [
    "ANY_NAME",
    "Ceiling",
    "CeilingHost",
    "Excess",
    "PortRange",
    "ceiling_excess",
    "check_ceiling",
    "host_within",
    "parse_port_range",
    "raise_excess",
    "timeout_excess",
]

ANY_NAME = "*"
"""The ceiling host pattern that covers every DNS name (and wildcard), no address."""
_MIN_PORT, _MAX_PORT = 1, 65535


@dataclass(frozen=True, order=True)
class PortRange:
    """The ports ``low`` to ``high``, both included."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def parse_port_range(value: object) -> PortRange:
    """A port (``443``) or an inclusive range (``"8000-8999"``); raises ``ValueError``
    (``TypeError`` for a value that is neither an int nor a str)."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str):
        low_text, dash, high_text = value.strip().partition("-")
        if not dash or not low_text.strip().isdigit() or not high_text.strip().isdigit():
            raise ValueError(f"{value!r} is not a port range (write LOW-HIGH, e.g. 8000-8999)")
        low, high = int(low_text), int(high_text)
    else:
        raise TypeError(f"expected a port or a range LOW-HIGH, not {value!r}")
    if not _MIN_PORT <= low <= high <= _MAX_PORT:
        raise ValueError(f"{value!r} is not within 1-65535 with LOW <= HIGH")
    return PortRange(low, high)


def host_within(inner: HostSpec, outer: HostSpec | None) -> bool:
    """Whether every destination ``inner`` names is also named by ``outer``.

    ``outer`` ``None`` stands for :data:`ANY_NAME`. See the module docstring.
    """
    if outer is None:
        return inner.kind in ("name", "wildcard")
    if outer.kind == "name":
        return inner.kind == "name" and inner.text == outer.text
    if outer.kind == "wildcard":
        suffix = outer.text[1:]  # ".example.com"
        if inner.kind == "name":
            return inner.text.endswith(suffix)
        if inner.kind == "wildcard":
            return inner.text == outer.text or inner.text.endswith(suffix)
        return False
    inner_net, outer_net = inner.network, outer.network
    if inner_net is None or outer_net is None or inner_net.version != outer_net.version:
        return False
    if isinstance(inner_net, ipaddress.IPv4Network) and isinstance(
        outer_net, ipaddress.IPv4Network
    ):
        return inner_net.subnet_of(outer_net)
    if isinstance(inner_net, ipaddress.IPv6Network) and isinstance(
        outer_net, ipaddress.IPv6Network
    ):
        return inner_net.subnet_of(outer_net)
    return False


@dataclass(frozen=True)
class CeilingHost:
    """Destinations a policy may allow: ``host`` (``None``: :data:`ANY_NAME`) on ``ports``."""

    host: HostSpec | None
    ports: tuple[PortRange, ...]

    @property
    def label(self) -> str:
        """``host:ports`` as shown to operators."""
        text = ANY_NAME if self.host is None else self.host.text
        shown = f"[{text}]" if ":" in text else text
        return f"{shown}:{','.join(str(p) for p in self.ports)}"

    def covers(self, host: HostSpec, port: int) -> bool:
        """Whether this ceiling entry admits ``host`` on ``port``."""
        return any(port in r for r in self.ports) and host_within(host, self.host)


@dataclass(frozen=True)
class Ceiling:
    """The most any repository policy may ask for; ``None`` parts do not limit.

    ``hosts`` empty: no egress at all may be allowed. ``images`` empty: only
    the built-in image.
    """

    hosts: tuple[CeilingHost, ...] | None = None
    images: tuple[ImagePattern, ...] | None = None
    max_vcpus: int | None = None
    max_memory_mib: int | None = None
    max_disk_mib: int | None = None
    max_timeout_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ceiling as operators write it (normalised)."""
        maxima = {
            "vcpus": self.max_vcpus,
            "memory_mib": self.max_memory_mib,
            "disk_mib": self.max_disk_mib,
            "timeout_seconds": self.max_timeout_seconds,
        }
        return {
            "hosts": None
            if self.hosts is None
            else [
                {
                    "host": ANY_NAME if h.host is None else h.host.text,
                    "ports": [str(p) for p in h.ports],
                }
                for h in self.hosts
            ],
            "images": None if self.images is None else [p.text for p in self.images],
            "max": {key: value for key, value in maxima.items() if value is not None},
        }


@dataclass(frozen=True)
class Excess:
    """One thing asked for beyond the ceiling: ``field`` (where it was asked),
    ``requested`` (what), ``limit`` (the ceiling key) and ``allowed`` (its value)."""

    field: str
    requested: str | int | float
    limit: str
    allowed: str | int | float | list[str]
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The error details' form."""
        return {
            "field": self.field,
            "requested": self.requested,
            "limit": self.limit,
            "allowed": self.allowed,
            "message": self.message,
        }


def _rule_excess(index: int, rule: AllowRule, hosts: tuple[CeilingHost, ...]) -> Excess | None:
    spec = rule.spec
    uncovered = tuple(p for p in rule.ports if not any(h.covers(spec, p) for h in hosts))
    if not uncovered:
        return None
    what = rule_label(rule.host, uncovered)
    return Excess(
        field=f"sandbox.network.allow[{index}]",
        requested=rule.label(),
        limit="policy.ceiling.hosts",
        allowed=[h.label for h in hosts],
        message=f"allow rule {rule.label()} is beyond the ceiling: {what} is not covered",
    )


def _image_excess(
    field: str, image: ImageSpec, patterns: tuple[ImagePattern, ...]
) -> Excess | None:
    if any(p.matches(image) for p in patterns):
        return None
    shown = str(image.ref) if isinstance(image, OciImage) else _debian_label(image)
    return Excess(
        field=field,
        requested=shown,
        limit="policy.ceiling.images",
        allowed=[p.text for p in patterns],
        message=f"image {shown} is not one the ceiling allows",
    )


def _debian_label(image: DebianImage) -> str:
    return f"debian:{image.suite}" if image.suite else "debian"


def ceiling_excess(
    policy: CompiledPolicy, ceiling: Ceiling, *, image_override: ImageRef | None = None
) -> tuple[Excess, ...]:
    """Everything ``policy`` (and a launch's ``image_override``) asks beyond ``ceiling``,
    in a stable order: allow rules (canonical order), images, resources."""
    found: list[Excess] = []
    if ceiling.hosts is not None:
        for index, rule in enumerate(policy.allow):
            excess = _rule_excess(index, rule, ceiling.hosts)
            if excess is not None:
                found.append(excess)
    if ceiling.images is not None:
        for field, image in (
            ("sandbox.image", policy.image),
            ("options.image", None if image_override is None else OciImage(image_override)),
        ):
            if image is not None:
                excess = _image_excess(field, image, ceiling.images)
                if excess is not None:
                    found.append(excess)
    for key, requested, maximum in (
        ("vcpus", policy.resources.vcpus, ceiling.max_vcpus),
        ("memory_mib", policy.resources.memory_mib, ceiling.max_memory_mib),
        ("disk_mib", policy.resources.disk_mib, ceiling.max_disk_mib),
    ):
        if requested is not None and maximum is not None and requested > maximum:
            found.append(
                Excess(
                    field=f"sandbox.resources.{key}",
                    requested=requested,
                    limit=f"policy.ceiling.max.{key}",
                    allowed=maximum,
                    message=f"sandbox.resources.{key} {requested} is over the ceiling's {maximum}",
                )
            )
    return tuple(found)


def timeout_excess(timeout: float, ceiling: Ceiling) -> Excess | None:
    """The excess of a run's requested ``timeout`` (seconds) over the ceiling, if any."""
    maximum = ceiling.max_timeout_seconds
    if maximum is None or timeout <= maximum:
        return None
    return Excess(
        field="timeout_seconds",
        requested=timeout,
        limit="policy.ceiling.max.timeout_seconds",
        allowed=maximum,
        message=f"timeout {timeout:g} s is over the ceiling's {maximum:g} s",
    )


def raise_excess(excess: Iterable[Excess], what: str) -> None:
    """Raise ``policy_conflict`` listing ``excess`` (``what`` names the asker); no-op if empty."""
    items = list(excess)
    if not items:
        return
    raise PolicyConflict(
        f"{what} asks beyond the runtime config's policy.ceiling: "
        + "; ".join(e.message for e in items),
        details={"excess": [e.to_dict() for e in items]},
    )


def check_ceiling(
    policy: CompiledPolicy, ceiling: Ceiling, *, image_override: ImageRef | None = None
) -> None:
    """Raise ``policy_conflict`` (``details['excess']``) if ``policy`` asks beyond ``ceiling``."""
    raise_excess(ceiling_excess(policy, ceiling, image_override=image_override), "the policy")
