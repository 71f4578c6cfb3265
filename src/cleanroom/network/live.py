"""One namespace's live state, and starting its DNS side once the run table is in place.

:func:`start_filtering` resolves the policy's exact names, installs what
they resolve to through one :class:`~cleanroom.network.installer.ElementInstaller`
(allowed answers the guard accepts, timed; denied names' answers, for the
run's whole life), builds the run's :class:`~cleanroom.network.dns.DnsFilter`
and, when the policy denies names, starts a task that re-resolves them so a
denied name that moves to a new address is blocked there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from dataclasses import dataclass, field

from cleanroom.errors import CleanroomError
from cleanroom.network.audit import AuditLog
from cleanroom.network.commands import in_netns, run_command
from cleanroom.network.dns import DnsFilter, DnsLimits
from cleanroom.network.egress import Element, denied_names
from cleanroom.network.guard import EgressGuard
from cleanroom.network.installer import ElementInstaller
from cleanroom.network.resolution import (
    denied_name_elements,
    elements_for,
    resolve_policy_names,
)
from cleanroom.network.upstream import UpstreamClient
from cleanroom.policy import CompiledPolicy

__all__ = ["LiveNetwork", "start_filtering"]


@dataclass
class LiveNetwork:
    """Mutable state of one namespace while it exists (owned by the manager)."""

    owner_id: str
    netns: str
    run_id: str | None = None
    """Set by activation; None while the slot is only reserved."""
    audit: AuditLog | None = None
    upstream: UpstreamClient | None = None
    dns: DnsFilter | None = None
    installer: ElementInstaller | None = None
    refresher: asyncio.Task[None] | None = None
    """Re-resolves denied names while the run lives (None: the policy denies no name)."""
    sockets: list[socket.socket] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop the deny refresher, the resolver and pending firewall updates (idempotent)."""
        refresher, self.refresher = self.refresher, None
        if refresher is not None:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
        if self.dns is not None:
            await self.dns.close()
        if self.installer is not None:
            await self.installer.close()

    async def close(self) -> None:
        """:meth:`stop`, then close the sockets and the audit log: everything of the
        run's but its namespace (what the process's exit would release)."""
        await self.stop()
        if self.upstream is not None:
            self.upstream.close()
        for sock in self.sockets:
            sock.close()
        if self.audit is not None:
            self.audit.close()


async def start_filtering(
    live: LiveNetwork,
    policy: CompiledPolicy,
    guard: EgressGuard,
    *,
    static_allowed: tuple[Element, ...],
    static_denied: tuple[Element, ...],
    limits: DnsLimits,
    ttl_floor: int,
    deny_refresh_s: float,
) -> float:
    """Resolve, install and build the DNS filter for ``live`` (its upstream and audit
    set, its run table applied with ``static_allowed``/``static_denied``); returns the
    resolution time in milliseconds.

    The filter is built but not serving: the caller hands it its sockets.
    """
    assert live.upstream is not None
    assert live.audit is not None
    netns = live.netns
    upstream = live.upstream

    async def apply(script: str) -> None:
        await run_command(in_netns(netns, ["nft", "-f", "-"]), stdin=script)

    live.installer = installer = ElementInstaller(
        apply, static_allowed=static_allowed, static_denied=static_denied
    )
    started = time.monotonic()
    learned, learned_denied = await resolve_policy_names(
        upstream, policy, live.audit, ttl_floor, guard
    )
    by_ttl: dict[int, list[Element]] = {}
    for element, ttl in learned:
        by_ttl.setdefault(ttl, []).append(element)
    # Concurrent requests join one batch: one nft transaction, denies first in it.
    await asyncio.gather(
        installer.deny(learned_denied),
        *(installer.allow(elements, ttl) for ttl, elements in by_ttl.items()),
    )
    resolution_ms = (time.monotonic() - started) * 1000

    async def learn(
        addresses: tuple[ipaddress.IPv4Address, ...], ports: tuple[int, ...], ttl: int
    ) -> int:
        return await installer.allow(elements_for(addresses, ports), ttl)

    live.dns = DnsFilter(
        policy, upstream, learn, live.audit, ttl_floor=ttl_floor, guard=guard, limits=limits
    )
    if denied_names(policy):
        live.refresher = asyncio.ensure_future(
            _refresh_denied(upstream, policy, installer, deny_refresh_s)
        )
    return resolution_ms


async def _refresh_denied(
    upstream: UpstreamClient,
    policy: CompiledPolicy,
    installer: ElementInstaller,
    interval: float,
) -> None:
    """Block the current addresses of denied names, every ``interval`` seconds (the
    installer skips addresses already blocked, so an unchanged answer costs no nft)."""
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(CleanroomError):  # the next round tries again
            await installer.deny(await denied_name_elements(upstream, policy))
