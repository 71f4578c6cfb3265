"""Host normalisation for policy rules and for decision targets.

A policy host is one of four kinds, always held in a canonical spelling:

- ``name``: a DNS name, lowercase ASCII (IDN labels become punycode through
  UTS #46 mapping, e.g. ``Bücher.Example`` -> ``xn--bcher-kva.example``), no
  trailing dot;
- ``wildcard``: ``*.`` followed by a name; it matches subdomains at any depth
  and never the name itself (the apex);
- ``ip``: an IPv4 or IPv6 address in its compressed form;
- ``cidr``: an IPv4 or IPv6 network whose host bits are all zero.

Everything else (empty text, whitespace, ``*`` elsewhere than a left-most
``*.`` label, URL schemes, paths, ``host:port``, underscores, numeric-only
top-level labels) is refused with :class:`InvalidHost`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

import idna

from cleanroom.errors import InvalidRequest

__all__ = [
    "HostKind",
    "HostSpec",
    "IPAddress",
    "IPNetwork",
    "InvalidHost",
    "normalize_host",
    "parse_host",
    "parse_target",
]

HostKind = Literal["name", "wildcard", "ip", "cidr"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_NAME = 253


class InvalidHost(InvalidRequest):
    """A host (in a policy rule or as a decision target) is not acceptable.

    Carries the stable code ``invalid_request``; the policy loader reports the
    message as a located problem instead.
    """


@dataclass(frozen=True)
class HostSpec:
    """A normalised host: its canonical text and its kind."""

    text: str
    kind: HostKind

    @property
    def network(self) -> IPNetwork | None:
        """The address block of an ``ip`` (single address) or ``cidr`` host, else ``None``."""
        if self.kind in ("ip", "cidr"):
            return ipaddress.ip_network(self.text)
        return None

    @property
    def domain(self) -> str | None:
        """The name under a wildcard (``example.test`` for ``*.example.test``), else ``None``."""
        return self.text[2:] if self.kind == "wildcard" else None

    def matches_name(self, name: str) -> bool:
        """Whether this host covers the normalised DNS ``name``."""
        if self.kind == "name":
            return name == self.text
        if self.kind == "wildcard":
            return name.endswith(self.text[1:])  # ".example.test": a strict subdomain
        return False

    def matches_address(self, address: IPAddress) -> bool:
        """Whether this host covers the IP ``address``."""
        network = self.network
        return network is not None and address in network

    def specificity(self) -> tuple[int, int]:
        """Sort key: larger is more specific (exact beats wildcard/CIDR; deeper/longer first)."""
        if self.kind in ("name", "ip"):
            return (1, 0)
        if self.kind == "wildcard":
            return (0, self.text.count("."))
        network = self.network
        assert network is not None
        return (0, network.prefixlen)


def _parse_ip(text: str) -> HostSpec | None:
    """An ``ip``/``cidr`` spec if ``text`` is an address or network literal."""
    if "/" in text:
        address_part = text.split("/", 1)[0]
        try:
            ipaddress.ip_address(address_part)
        except ValueError:
            return None
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise InvalidHost(f"{text!r} is not a valid CIDR block ({exc})") from exc
        if network.num_addresses == 1:
            return HostSpec(str(network.network_address), "ip")
        return HostSpec(str(network), "cidr")
    if "%" in text:
        raise InvalidHost(f"{text!r}: IPv6 zone indexes are not supported")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return HostSpec(str(address), "ip")


def _encode_name(text: str, original: str) -> str:
    """Lowercase ASCII (punycode) spelling of the DNS name ``text``."""
    try:
        encoded = idna.encode(text, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidHost(f"{original!r} is not a valid host name ({exc})") from exc
    # UTS #46 maps some dots (e.g. U+3002) to '.', which can leave a trailing one.
    encoded = encoded.removesuffix(".")
    labels = encoded.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidHost(f"{original!r} is not a valid host name (bad label {label!r})")
    if len(encoded) > _MAX_NAME:
        raise InvalidHost(f"{original!r} is longer than {_MAX_NAME} characters")
    if labels[-1].isdigit():
        raise InvalidHost(f"{original!r} is neither an IP address nor a host name")
    return encoded


def parse_host(raw: str, *, allow_wildcard: bool = True) -> HostSpec:
    """Normalise one policy host (see the module docstring); raises :class:`InvalidHost`."""
    text = raw.strip().lower()
    if not text:
        raise InvalidHost("host must not be empty")
    if "://" in text:
        raise InvalidHost(f"{raw!r}: give a host, not a URL (no scheme)")
    if any(char.isspace() for char in text):
        raise InvalidHost(f"{raw!r}: a host must not contain whitespace")
    if text.startswith("[") or text.endswith("]"):
        raise InvalidHost(f"{raw!r}: write IPv6 addresses without brackets")
    spec = _parse_ip(text)
    if spec is not None:
        return spec
    if "/" in text:
        raise InvalidHost(f"{raw!r}: a host must not contain a path")
    if ":" in text:
        raise InvalidHost(f"{raw!r}: give ports in 'ports', not as host:port")
    text = text.removesuffix(".")  # the root label: "example.test." is "example.test"
    if text.endswith("."):
        raise InvalidHost(f"{raw!r} has an empty label")
    wildcard = text.startswith("*.")
    if wildcard:
        if not allow_wildcard:
            raise InvalidHost(f"{raw!r}: a wildcard is not allowed here")
        text = text[2:]
    if "*" in text:
        raise InvalidHost(f"{raw!r}: '*' is only allowed as a whole left-most label ('*.')")
    if not text:
        raise InvalidHost(f"{raw!r} is not a valid host")
    if wildcard and _parse_ip(text) is not None:
        raise InvalidHost(f"{raw!r}: a wildcard must be followed by a host name, not an address")
    name = _encode_name(text, raw)
    return HostSpec(f"*.{name}" if wildcard else name, "wildcard" if wildcard else "name")


def normalize_host(host: str) -> str:
    """The canonical spelling of a policy host; raises :class:`InvalidHost` (invalid_request)."""
    return parse_host(host).text


def parse_target(target: str) -> IPAddress | str:
    """A decision target: an IP address, or a normalised DNS name (no wildcard, no CIDR)."""
    spec = parse_host(target, allow_wildcard=False)
    if spec.kind == "cidr":
        raise InvalidHost(f"{target!r}: a target is one address or name, not a network")
    if spec.kind == "ip":
        return ipaddress.ip_address(spec.text)
    return spec.text
