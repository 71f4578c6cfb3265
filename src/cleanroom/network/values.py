"""The network layer's values: settings it reads, a reserved slot, an activated run network.

Also the namespace prefix (``$CLEANROOM_NETNS_PREFIX``) that names everything a
:class:`~cleanroom.network.manager.NetworkManager` owns.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Protocol

from cleanroom.errors import ConfigInvalid
from cleanroom.netspec import GuestInterface, NetworkAttachment
from cleanroom.network.addressing import LinkPlan
from cleanroom.network.dns import DnsLimits

__all__ = [
    "DEFAULT_PREFIX",
    "PREFIX_ENV",
    "DnsLimitSettings",
    "NetworkSettings",
    "NetworkSlot",
    "RunNetwork",
    "default_prefix",
    "dns_limits",
]

DEFAULT_PREFIX = "crn-"
PREFIX_ENV = "CLEANROOM_NETNS_PREFIX"
"""Overrides :data:`DEFAULT_PREFIX` (tests give each run its own prefix)."""
_PREFIX_RE = re.compile(r"[a-z][a-z0-9-]{0,15}")


def default_prefix() -> str:
    """``$CLEANROOM_NETNS_PREFIX`` if set, else :data:`DEFAULT_PREFIX`; ``ConfigInvalid``
    unless it is 1-16 lowercase letters, digits and dashes starting with a letter."""
    value = os.environ.get(PREFIX_ENV)
    if not value:
        return DEFAULT_PREFIX
    if _PREFIX_RE.fullmatch(value) is None:
        raise ConfigInvalid(
            f"{PREFIX_ENV} must be 1-16 of a-z, 0-9 and '-', starting with a letter",
            details={"value": value[:300]},
        )
    return value


class NetworkSettings(Protocol):
    """The ``network`` section of the runtime config (``cleanroom.config.NetworkConfig``)."""

    @property
    def uplink_netns(self) -> str | None: ...

    @property
    def resolvers(self) -> tuple[str, ...] | None: ...


@dataclass(frozen=True)
class NetworkSlot:
    """A reserved namespace with its TAP and links, behind a drop-everything table.

    Hand ``attachment`` to the backend at boot; :meth:`NetworkManager.activate`
    opens it for one run, :meth:`NetworkManager.teardown` removes it.
    """

    owner_id: str
    netns: str
    attachment: NetworkAttachment
    link: LinkPlan
    guest_if: str
    mac: str


@dataclass(frozen=True)
class RunNetwork:
    """A run's prepared network: hand ``attachment`` to the backend, ``guest`` to the agent."""

    run_id: str
    netns: str
    attachment: NetworkAttachment
    address: str
    prefix: int
    gateway: str
    dns: str
    mac: str
    resolver: str
    """Address the run's DNS filter listens on (UDP and TCP 53); equals ``dns``."""
    policy_resolution_ms: float
    network_setup_ms: float

    @property
    def guest(self) -> GuestInterface:
        """The guest's eth0 settings (the service hands them to the agent)."""
        return GuestInterface(
            address=self.address,
            prefix=self.prefix,
            gateway=self.gateway,
            dns=self.dns,
            mac=self.mac,
        )

    @property
    def timings(self) -> dict[str, float]:
        """``policy_resolution_ms`` and ``network_setup_ms`` for the run record."""
        return {
            "policy_resolution_ms": self.policy_resolution_ms,
            "network_setup_ms": self.network_setup_ms,
        }


class DnsLimitSettings(Protocol):
    """The DNS keys of the runtime config's ``limits`` section (``cleanroom.config_limits``)."""

    @property
    def dns_tcp_clients(self) -> int: ...

    @property
    def dns_inflight_queries(self) -> int: ...

    @property
    def dns_queries_per_second(self) -> int: ...

    @property
    def dns_audit_bytes(self) -> int: ...


def dns_limits(settings: DnsLimitSettings | None) -> DnsLimits:
    """The DNS filter's limits from the runtime config (defaults for None)."""
    if settings is None:
        return DnsLimits()
    return DnsLimits(
        tcp_clients=settings.dns_tcp_clients,
        inflight_queries=settings.dns_inflight_queries,
        queries_per_second=settings.dns_queries_per_second,
        audit_bytes=settings.dns_audit_bytes,
    )
