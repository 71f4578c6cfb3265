"""Destinations a run can never open by accident: special ranges, the host, other runs.

Two tiers, both enforced by the run table (:mod:`cleanroom.network.ruleset`)
and by the DNS filter (:mod:`cleanroom.network.dns`):

- **forbidden** (:class:`EgressGuard`): the host's own addresses and the run
  networks (the link pool every run's addresses come from). No rule opens
  them, and a DNS answer pointing there is never learned.
- **special** (:data:`SPECIAL_RANGES`): unspecified (``0/8``), RFC 1918
  (``10/8``, ``172.16/12``, ``192.168/16``), CGNAT (``100.64/10``), loopback,
  link-local, multicast, reserved (``240/4``, with the broadcast address).
  Only a static rule that names the range or a sub-range of it opens (part
  of) it, so ``0.0.0.0/0`` opens none of them; a DNS answer inside one is
  never learned. IPv6 (dropped by the run table anyway) has its own list
  (:data:`SPECIAL_RANGES6`: unspecified, loopback, ULA, link-local,
  multicast); an IPv4-mapped IPv6 address is judged as its IPv4 address.

The documentation ranges (``192.0.2/24``, ``198.51.100/24``,
``203.0.113/24``) are deliberately *not* special: they are where the test
topology's "internet" lives.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "SPECIAL_RANGES",
    "SPECIAL_RANGES6",
    "EgressGuard",
    "special_reason",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

SPECIAL_RANGES: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "cgnat"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)
"""IPv4 ranges reachable only through a static rule naming the range or a sub-range."""

SPECIAL_RANGES6: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "ula"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)
"""IPv6 ranges with the same standing (the run table drops IPv6 entirely)."""


def special_reason(address: IPAddress) -> str | None:
    """Why ``address`` lies in a special range (``"private"``, ``"cgnat"``, ...), else None."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is None:
            return next((r for net, r in SPECIAL_RANGES6 if address in net), None)
        address = mapped
    if address == _BROADCAST:
        return "broadcast"
    return next((r for net, r in SPECIAL_RANGES if address in net), None)


@dataclass(frozen=True)
class EgressGuard:
    """What one run may never learn from DNS: see the module docstring.

    ``host_addresses`` are the host's own addresses; ``run_networks`` the
    blocks run links are carved from.
    """

    host_addresses: frozenset[ipaddress.IPv4Address] = frozenset()
    run_networks: tuple[ipaddress.IPv4Network, ...] = ()

    @classmethod
    def of(
        cls,
        host_addresses: Iterable[ipaddress.IPv4Address],
        run_networks: Iterable[ipaddress.IPv4Network],
    ) -> EgressGuard:
        """A guard from any iterables."""
        return cls(frozenset(host_addresses), tuple(run_networks))

    def refusal(self, address: IPAddress) -> str | None:
        """Why a DNS answer's ``address`` must not be learned (``"host"``,
        ``"run-network"`` or a :func:`special_reason`), or None if it may be."""
        v4 = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address
        if v4 is not None:
            if v4 in self.host_addresses:
                return "host"
            if any(v4 in net for net in self.run_networks):
                return "run-network"
        return special_reason(address)
