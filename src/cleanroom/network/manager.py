"""Per-run egress isolation in two phases: reserve a slot, activate it for a run.

:class:`NetworkManager` gives each slot its own network namespace
(``<prefix><short owner id>``) holding the VMM's TAP device and a veth link to
the uplink (the host namespace, or ``network.uplink_netns``); see
:mod:`cleanroom.network.links`. A reserved slot's nftables table drops
everything (:func:`~cleanroom.network.ruleset.drop_all_ruleset`) and no
resolver runs, so a guest booted on it has no network path at all. Activation
replaces that table with the run's ruleset in one transaction, starts the
run's DNS filter (:mod:`cleanroom.network.dns`) and opens the audit log. The
host's own addresses and the pool are unreachable from every run, and DNS
answers pointing inside are never learned (:mod:`cleanroom.network.guard`).
Teardown deletes the namespace, which takes the TAP, both veth ends and the
table with it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from pathlib import Path

from cleanroom.errors import CleanroomError, NetworkSetupFailed
from cleanroom.netspec import NetworkAttachment
from cleanroom.network.addressing import DEFAULT_POOL, GUEST_PREFIX, guest_mac
from cleanroom.network.audit import EVENTS_FILE, AuditLog
from cleanroom.network.cleanup import NetworkSummary, collect_counters, delete_netns
from cleanroom.network.commands import in_netns, run_command
from cleanroom.network.egress import allowed_elements, denied_elements
from cleanroom.network.guard import EgressGuard
from cleanroom.network.links import (
    FAKE_GUEST_IF,
    Links,
    make_sockets,
    namespace_addresses,
    system_resolvers,
)
from cleanroom.network.live import LiveNetwork, start_filtering
from cleanroom.network.netns import call_in_netns
from cleanroom.network.owners import owned_elsewhere, record_owner
from cleanroom.network.ruleset import RunRules, drop_all_ruleset, run_ruleset
from cleanroom.network.upstream import UpstreamClient
from cleanroom.network.values import (
    DEFAULT_PREFIX,
    PREFIX_ENV,
    DnsLimitSettings,
    NetworkSettings,
    NetworkSlot,
    RunNetwork,
    default_prefix,
    dns_limits,
)
from cleanroom.policy import CompiledPolicy

__all__ = [
    "DEFAULT_PREFIX",
    "PREFIX_ENV",
    "NetworkManager",
    "NetworkSettings",
    "NetworkSlot",
    "NetworkSummary",
    "RunNetwork",
    "default_prefix",
    "system_resolvers",
]

log = logging.getLogger(__name__)


class NetworkManager:
    """Reserves, activates and tears down run networks (one instance per server).

    ``pool`` is the private IPv4 block run links are carved from; ``prefix``
    (default: :func:`default_prefix`) names everything this manager owns
    (namespaces), so :meth:`reconcile` can
    find leftovers; ``ttl_floor`` is the minimum lifetime (s) of addresses
    learned from DNS answers; ``limits`` bounds each run's DNS filter and
    audit log (the runtime config's ``limits``; defaults for None).
    ``host_netns`` names the namespace whose addresses are the host's own
    (default: this process's namespace; tests point it at one they made):
    those addresses and ``pool`` are unreachable from every run whatever the
    policy says. Denied names are resolved again every ``deny_refresh_s``
    seconds while a run lives, so a denied name that moves stays blocked.
    """

    def __init__(
        self,
        config: NetworkSettings,
        *,
        pool: ipaddress.IPv4Network = DEFAULT_POOL,
        prefix: str | None = None,
        ttl_floor: int = 60,
        limits: DnsLimitSettings | None = None,
        host_netns: str | None = None,
        deny_refresh_s: float = 60.0,
    ) -> None:
        self.uplink_netns = config.uplink_netns
        self.resolvers = (
            tuple(config.resolvers) if config.resolvers is not None else system_resolvers()
        )
        self.pool = pool
        self.prefix = default_prefix() if prefix is None else prefix
        self.ttl_floor = ttl_floor
        self.dns_limits = dns_limits(limits)
        self.host_netns = host_netns
        self.deny_refresh_s = deny_refresh_s
        self._links = Links(config.uplink_netns, pool)
        self._live: dict[str, LiveNetwork] = {}
        """By namespace name."""
        self._finished: dict[str, NetworkSummary] = {}

    def netns_name(self, owner_id: str) -> str:
        """The namespace name: the prefix and the last 12 letters/digits of the owner
        id (a run id without its ``run-``, or a pooled guest's id)."""
        short = re.sub(r"[^a-z0-9]", "", owner_id.lower().removeprefix("run-"))[-12:]
        if not short:
            raise NetworkSetupFailed(f"id {owner_id!r} has no usable characters")
        return f"{self.prefix}{short}"

    # -- setup --------------------------------------------------------------------------

    async def setup(
        self,
        run_id: str,
        policy: CompiledPolicy,
        run_dir: Path,
        *,
        fake_guest_netns: str | None = None,
    ) -> RunNetwork:
        """:meth:`reserve` a slot for ``run_id`` and :meth:`activate` it at once.

        ``network_setup_ms`` covers both phases. Raises ``NetworkSetupFailed``;
        on any failure (or cancellation) everything created is removed.
        """
        started = time.monotonic()
        slot = await self.reserve(run_id, fake_guest_netns=fake_guest_netns)
        return await self._activate(slot, run_id, policy, run_dir, started)

    async def reserve(self, owner_id: str, *, fake_guest_netns: str | None = None) -> NetworkSlot:
        """Create a namespace with its links and TAP behind a table that drops everything.

        No resolver runs and forwarding stays off until :meth:`activate`.
        ``fake_guest_netns`` is for tests only: besides the TAP (created as in
        production), a veth pair links the namespace to that existing
        namespace, whose ``eth0`` gets the guest's address, MAC and route, and
        the firewall treats it as the guest interface. Raises
        ``NetworkSetupFailed``; on failure (or cancellation) everything
        created so far is removed.
        """
        netns = self.netns_name(owner_id)
        if netns in self._live:
            raise NetworkSetupFailed(f"{owner_id} already has a network", details={"netns": netns})
        live = LiveNetwork(owner_id, netns)
        try:
            await run_command(["ip", "netns", "add", netns])
            record_owner(netns)
            self._live[netns] = live
            # The table goes in before any link exists, so nothing passes even for a moment.
            await run_command(in_netns(netns, ["nft", "-f", "-"]), stdin=drop_all_ruleset())
            mac = guest_mac(owner_id)
            link = await self._links.build(netns, mac, fake_guest_netns)
        except BaseException as exc:
            await asyncio.shield(self._destroy(live))
            raise _translated(exc, f"network reservation for {owner_id} failed", netns) from exc
        return NetworkSlot(
            owner_id=owner_id,
            netns=netns,
            attachment=NetworkAttachment(netns=netns, tap=link.tap, mac=mac),
            link=link,
            guest_if=FAKE_GUEST_IF if fake_guest_netns else link.tap,
            mac=mac,
        )

    async def activate(
        self, slot: NetworkSlot, run_id: str, policy: CompiledPolicy, run_dir: Path
    ) -> RunNetwork:
        """Open ``slot`` for one run: install ``policy``'s ruleset atomically in place of
        the drop-all table, start the DNS filter, resolve allowed names, open the audit
        log (``run_dir/network-events.jsonl``).

        ``network_setup_ms`` is this call's duration. Raises ``NetworkSetupFailed``
        (also for a slot that is not reserved or already active); on failure the
        whole slot is removed.
        """
        return await self._activate(slot, run_id, policy, run_dir, time.monotonic())

    async def _activate(
        self, slot: NetworkSlot, run_id: str, policy: CompiledPolicy, run_dir: Path, started: float
    ) -> RunNetwork:
        live = self._live.get(slot.netns)
        if live is None or live.run_id is not None:
            raise NetworkSetupFailed(
                f"network slot {slot.netns} is not reserved or already active",
                details={"netns": slot.netns},
            )
        live.run_id = run_id
        live.audit = AuditLog(run_id, run_dir / EVENTS_FILE, self.dns_limits.audit_bytes)
        try:
            return await self._open(live, slot, policy, started)
        except BaseException as exc:
            await asyncio.shield(self._destroy(live))
            raise _translated(exc, f"network setup for run {run_id} failed", slot.netns) from exc

    async def _open(
        self, live: LiveNetwork, slot: NetworkSlot, policy: CompiledPolicy, started: float
    ) -> RunNetwork:
        assert live.run_id is not None
        assert live.audit is not None
        netns = live.netns
        link = slot.link
        gateway = str(link.gateway)
        live.sockets = await call_in_netns(netns, lambda: make_sockets(gateway))
        udp_sock, tcp_sock, upstream_sock = live.sockets
        resolvers = self._checked_resolvers(policy)
        live.upstream = UpstreamClient(resolvers)
        await live.upstream.start(upstream_sock)

        host = await namespace_addresses(self.host_netns)
        same = self.host_netns == self.uplink_netns  # the usual case: the host is the uplink
        uplink = host if same else await self._links.uplink_addresses()
        guard = EgressGuard.of(host, (self.pool,))
        rules = RunRules(
            link=link,
            guest_if=slot.guest_if,
            pool=self.pool,
            resolvers=tuple(ipaddress.IPv4Address(r) for r in resolvers),
            uplink_local=uplink,
            allowed=allowed_elements(policy),
            denied=denied_elements(policy),
            host_addresses=host,
        )
        # run_ruleset deletes and recreates the table in one transaction: an atomic swap
        # of the drop-all table. It must precede resolution, which needs its output rule.
        await run_command(in_netns(netns, ["nft", "-f", "-"]), stdin=run_ruleset(rules))

        resolution_ms = await start_filtering(
            live,
            policy,
            guard,
            static_allowed=rules.allowed,
            static_denied=rules.denied,
            limits=self.dns_limits,
            ttl_floor=self.ttl_floor,
            deny_refresh_s=self.deny_refresh_s,
        )
        assert live.dns is not None
        await live.dns.serve(udp_sock, tcp_sock)
        setup_ms = (time.monotonic() - started) * 1000
        return RunNetwork(
            run_id=live.run_id,
            netns=netns,
            attachment=slot.attachment,
            address=str(link.guest),
            prefix=GUEST_PREFIX,
            gateway=gateway,
            dns=gateway,
            mac=slot.mac,
            resolver=gateway,
            policy_resolution_ms=round(resolution_ms, 3),
            network_setup_ms=round(setup_ms, 3),
        )

    def _checked_resolvers(self, policy: CompiledPolicy) -> tuple[str, ...]:
        usable = tuple(r for r in self.resolvers if not ipaddress.IPv4Address(r).is_loopback)
        if not usable and policy.allowed_names:
            raise NetworkSetupFailed(
                "no usable upstream DNS resolver for the run's DNS filter "
                "(loopback resolvers are unreachable from a run namespace); "
                "set network.resolvers in the runtime config",
                details={"resolvers": list(self.resolvers)},
            )
        return usable

    # -- teardown -----------------------------------------------------------------------

    async def teardown(self, target: RunNetwork | NetworkSlot) -> NetworkSummary:
        """Remove a run's network (or a slot, activated or not) and write its
        blocked-traffic events.

        Idempotent: a second call for a run returns the first summary. A slot
        never activated yields an empty summary (no events file). Never raises
        for cleanup trouble (it is logged); the namespace is always deleted.
        """
        key = target.run_id if isinstance(target, RunNetwork) else target.owner_id
        done = self._finished.get(key)
        if done is not None:
            return done
        started = time.monotonic()
        live = self._live.get(target.netns)
        if live is None or live.audit is None or live.run_id is None:
            if live is not None:
                await self._destroy(live)
            else:  # never set up by this manager (or forgotten): just delete its namespace
                await delete_netns(target.netns)
            return NetworkSummary(key, 0, 0, 0, 0, 0, _ms_since(started), "")
        await live.stop()
        counts = await collect_counters(live.netns, live.audit)
        live.audit.summarise()
        await self._destroy(live)
        summary = NetworkSummary(
            run_id=live.run_id,
            dns_allowed=live.audit.dns_allowed,
            dns_refused=live.audit.dns_refused,
            dns_dropped=live.audit.dns_dropped,
            connections_allowed=counts[0],
            connections_blocked=counts[1],
            blocked_destinations=counts[2],
            network_cleanup_ms=_ms_since(started),
            events_path=str(live.audit.path),
        )
        self._finished[live.run_id] = summary
        self._finished[live.owner_id] = summary
        return summary

    async def _destroy(self, live: LiveNetwork) -> None:
        """Stop the resolver, close sockets, delete the namespace (and with it the links)."""
        await live.close()
        await delete_netns(live.netns)
        self._live.pop(live.netns, None)

    # -- reconcile ----------------------------------------------------------------------

    async def reconcile(self) -> list[str]:
        """Delete namespaces carrying this manager's prefix that no live slot owns
        and no other live process owns (leftovers of a crashed server, reserved or
        active); returns and logs their names. Their TAPs, veths and tables go
        with them."""
        listing = await run_command(["ip", "-j", "netns", "list"], check=False)
        names = [
            entry.get("name", "")
            for entry in (json.loads(listing.stdout) if listing.stdout.strip() else [])
        ]
        removed: list[str] = []
        for name in names:
            leftover = (
                name.startswith(self.prefix)
                and name not in self._live
                and not owned_elsewhere(name)  # another live server's run
            )
            if leftover and await delete_netns(name):
                removed.append(name)
                log.warning("removed leftover network namespace %s", name)
        return removed


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _translated(exc: BaseException, message: str, netns: str) -> BaseException:
    """``exc`` as it should propagate: cleanroom errors and cancellation unchanged,
    OS and value errors as ``NetworkSetupFailed``."""
    if isinstance(exc, CleanroomError | asyncio.CancelledError):
        return exc
    if isinstance(exc, OSError | ValueError):
        return NetworkSetupFailed(f"{message}: {exc}", details={"netns": netns})
    return exc
