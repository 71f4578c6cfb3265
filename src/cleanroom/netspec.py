"""What the network layer hands to the layers that start guests (bottom layer).

The network layer prepares a run's namespace and describes it with these
values; backends attach the VMM to it and the service tells the guest agent how
to configure eth0. Nothing here knows about a VMM, the agent protocol or nftables.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GuestInterface", "NetworkAttachment"]


@dataclass(frozen=True)
class NetworkAttachment:
    """The run's network, prepared by the network layer before the VMM starts.

    The VMM process must run inside ``netns`` (``ip netns exec``) and attach
    the guest NIC to the TAP device ``tap`` with MAC ``mac``.
    """

    netns: str
    tap: str
    mac: str


@dataclass(frozen=True)
class GuestInterface:
    """IPv4 settings for the guest's eth0 (``mac`` None keeps the device's own).

    The same fields as the agent's ``GuestNetwork`` configure message, which the
    service builds from this value (the agent package imports nothing outside itself).
    """

    address: str
    prefix: int
    gateway: str
    dns: str
    mac: str | None = None
