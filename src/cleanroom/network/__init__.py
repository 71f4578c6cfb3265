"""Deny-by-default egress for run networks: namespaces, links, nftables, DNS filter, audit.

``NetworkManager(config).setup(run_id, policy, run_dir)`` prepares a run's
network (a :class:`RunNetwork` whose ``attachment`` goes to the backend and
``guest`` to the guest agent); ``teardown`` removes it and returns a
:class:`NetworkSummary`; ``reconcile`` removes leftovers after a crash.
"""

from __future__ import annotations

from cleanroom.network.audit import EVENTS_FILE, read_events
from cleanroom.network.dns import DnsLimits
from cleanroom.network.guard import SPECIAL_RANGES, EgressGuard, special_reason
from cleanroom.network.manager import (
    DEFAULT_PREFIX,
    NetworkManager,
    NetworkSettings,
    NetworkSlot,
    NetworkSummary,
    RunNetwork,
    system_resolvers,
)

__all__ = [
    "DEFAULT_PREFIX",
    "EVENTS_FILE",
    "SPECIAL_RANGES",
    "DnsLimits",
    "EgressGuard",
    "NetworkManager",
    "NetworkSettings",
    "NetworkSlot",
    "NetworkSummary",
    "RunNetwork",
    "read_events",
    "special_reason",
    "system_resolvers",
]
