"""Per-run link addressing: two /30 links carved from one private pool by index.

Run slot ``i`` owns the ``/29`` block at ``pool + 8*i``:

- the guest link (TAP, run namespace side = gateway) is the first ``/30``:
  ``.1`` gateway and resolver, ``.2`` the guest;
- the uplink link (veth) is the second ``/30``: ``.5`` on the uplink side,
  ``.6`` in the run namespace.

Slots never overlap, so concurrent runs cannot collide. The slot is claimed by
creating the uplink-side veth ``crnv<i>``: link names are unique per
namespace, so that creation is an atomic, cross-process lock on the slot
(see :class:`~cleanroom.network.manager.NetworkManager`).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

__all__ = [
    "DEFAULT_POOL",
    "GUEST_PREFIX",
    "UPLINK_VETH_PREFIX",
    "LinkPlan",
    "guest_mac",
    "plan_slot",
    "slot_count",
]

DEFAULT_POOL = ipaddress.IPv4Network("10.231.0.0/16")
"""Private block for run links; only the uplink ever sees the veth ``/30`` inside it."""

GUEST_PREFIX = 30
UPLINK_VETH_PREFIX = "crnv"
_BLOCK = 8


@dataclass(frozen=True)
class LinkPlan:
    """Addresses and interface names of one run slot."""

    slot: int
    guest_network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    guest: ipaddress.IPv4Address
    veth_network: ipaddress.IPv4Network
    uplink_address: ipaddress.IPv4Address
    run_address: ipaddress.IPv4Address
    uplink_veth: str
    """The veth end in the uplink namespace (its name claims the slot)."""
    run_veth: str = "veth0"
    """The veth end in the run namespace."""
    tap: str = "tap0"
    """The VMM's TAP device in the run namespace."""


def slot_count(pool: ipaddress.IPv4Network) -> int:
    """How many run slots ``pool`` holds."""
    return pool.num_addresses // _BLOCK


def plan_slot(pool: ipaddress.IPv4Network, slot: int) -> LinkPlan:
    """The addresses of ``slot`` in ``pool``; raises ``ValueError`` if out of range."""
    if not 0 <= slot < slot_count(pool):
        raise ValueError(f"slot {slot} is outside {pool} ({slot_count(pool)} slots)")
    base = pool.network_address + _BLOCK * slot
    guest_network = ipaddress.IPv4Network((base, GUEST_PREFIX))
    veth_network = ipaddress.IPv4Network((base + 4, GUEST_PREFIX))
    return LinkPlan(
        slot=slot,
        guest_network=guest_network,
        gateway=base + 1,
        guest=base + 2,
        veth_network=veth_network,
        uplink_address=base + 5,
        run_address=base + 6,
        uplink_veth=f"{UPLINK_VETH_PREFIX}{slot}",
    )


def guest_mac(run_id: str) -> str:
    """A stable, locally administered unicast MAC for the run's guest NIC."""
    digest = hashlib.sha256(run_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))
