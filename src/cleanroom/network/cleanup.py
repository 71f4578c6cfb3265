"""Ending a run network: the firewall's counters as audit events, the summary, deletion."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from cleanroom.network.audit import AuditLog
from cleanroom.network.commands import in_netns, run_command
from cleanroom.network.owners import forget_owner
from cleanroom.network.ruleset import RUN_TABLE

__all__ = ["NetworkSummary", "collect_counters", "delete_netns"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkSummary:
    """What the run's network saw, for ``run-observability.json``."""

    run_id: str
    dns_allowed: int
    dns_refused: int
    connections_allowed: int
    """New flows (first packets) the firewall accepted."""
    connections_blocked: int
    """Blocked packets towards any destination (retries count again)."""
    blocked_destinations: int
    network_cleanup_ms: float
    events_path: str
    dns_dropped: int = 0
    """DNS queries or connections dropped by a per-run DNS limit."""

    @property
    def allowed(self) -> int:
        """Allowed DNS answers plus accepted new flows."""
        return self.dns_allowed + self.connections_allowed

    @property
    def blocked(self) -> int:
        """Refused or dropped DNS queries plus blocked packets."""
        return self.dns_refused + self.dns_dropped + self.connections_blocked

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {
            "mode": "filtered",
            "allowed": self.allowed,
            "blocked": self.blocked,
            "dns_allowed": self.dns_allowed,
            "dns_refused": self.dns_refused,
            "dns_dropped": self.dns_dropped,
            "connections_allowed": self.connections_allowed,
            "connections_blocked": self.connections_blocked,
            "blocked_destinations": self.blocked_destinations,
            "network_cleanup_ms": self.network_cleanup_ms,
            "events": self.events_path,
        }


async def collect_counters(netns: str, audit: AuditLog) -> tuple[int, int, int]:
    """Read the run table's counters and blocked sets into ``audit`` events.

    Returns (accepted new flows, blocked packets, blocked destinations).
    """
    result = await run_command(
        in_netns(netns, ["nft", "-j", "list", "table", "inet", RUN_TABLE]), check=False
    )
    if result.returncode != 0:
        log.warning("cannot read the firewall of %s: %s", netns, result.stderr.strip())
        return 0, 0, 0
    allowed = 0
    blocked_packets = 0
    destinations = 0
    for item in json.loads(result.stdout).get("nftables", []):
        counter = item.get("counter")
        if counter and counter.get("name") == "allowed_new":
            allowed = int(counter.get("packets", 0))
        nft_set = item.get("set")
        if not nft_set or nft_set.get("name") not in ("blocked", "blocked_other", "blocked6"):
            continue
        for elem in nft_set.get("elem", []):
            event = _blocked_event(nft_set["name"], elem)
            if event is None:
                continue
            audit.write("blocked", **event)
            blocked_packets += event["count"]
            destinations += 1
    return allowed, blocked_packets, destinations


async def delete_netns(name: str) -> bool:
    """Delete a run namespace; True if it existed and is gone.

    The run-side veth is deleted first: that removes both ends at once,
    whereas the kernel tears a deleted namespace's devices down asynchronously,
    which would leave the uplink end visible for a moment.
    """
    await run_command(["ip", "-n", name, "link", "del", "veth0"], check=False)
    result = await run_command(["ip", "netns", "del", name], check=False)
    if result.returncode != 0 and "No such file" not in result.stderr:
        log.warning("cannot delete namespace %s: %s", name, result.stderr.strip())
    if result.returncode == 0 or "No such file" in result.stderr:
        forget_owner(name)
    return result.returncode == 0


def _blocked_event(set_name: str, elem: Any) -> dict[str, Any] | None:
    """One blocked-set element from ``nft -j`` as an audit event's fields."""
    inner = elem.get("elem", elem) if isinstance(elem, dict) else None
    if not isinstance(inner, dict):
        return None
    concat = inner.get("val", {}).get("concat") if isinstance(inner.get("val"), dict) else None
    if not isinstance(concat, list):
        return None
    count = int(inner.get("counter", {}).get("packets", 0))
    if set_name == "blocked_other":
        dst, proto = concat[0], concat[1]
        return {"dst": str(dst), "port": None, "protocol": str(proto), "count": count}
    dst, proto, port = concat[0], concat[1], concat[2]
    return {
        "dst": str(dst),
        "port": int(port),
        "protocol": str(proto),
        "count": count,
        "family": "ipv6" if set_name == "blocked6" else "ipv4",
    }
