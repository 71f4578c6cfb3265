"""Per-run egress isolation: namespace, links, firewall, resolver, audit, cleanup.

:class:`NetworkManager` gives each run its own network namespace
(``<prefix><short run id>``) holding the VMM's TAP device, a veth link to the
uplink (the host namespace, or ``network.uplink_netns``), the run's nftables
table (see :mod:`cleanroom.network.ruleset`) and the run's DNS filter (see
:mod:`cleanroom.network.dns`). Teardown deletes the namespace, which takes the
TAP, both veth ends and the table with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cleanroom.agent.messages import GuestNetwork
from cleanroom.backends.base import NetworkAttachment
from cleanroom.errors import CleanroomError, NetworkSetupFailed
from cleanroom.network.addressing import (
    DEFAULT_POOL,
    GUEST_PREFIX,
    UPLINK_VETH_PREFIX,
    LinkPlan,
    guest_mac,
    plan_slot,
    slot_count,
)
from cleanroom.network.audit import EVENTS_FILE, AuditLog
from cleanroom.network.commands import in_netns, run_command
from cleanroom.network.dns import DnsFilter, UpstreamClient, UpstreamFailed
from cleanroom.network.egress import (
    PROTOCOLS,
    Element,
    allowed_elements,
    denied_elements,
    denied_names,
    exact_allowed_names,
    name_verdict,
)
from cleanroom.network.netns import call_in_netns
from cleanroom.network.ruleset import (
    RUN_TABLE,
    RunRules,
    add_elements,
    run_ruleset,
    uplink_ruleset,
)
from cleanroom.policy import CompiledPolicy

__all__ = [
    "DEFAULT_PREFIX",
    "NetworkManager",
    "NetworkSettings",
    "NetworkSummary",
    "RunNetwork",
    "system_resolvers",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "crn-"
_FAKE_GUEST_IF = "gst0"
_MAX_SLOT_TRIES = 64


class NetworkSettings(Protocol):
    """The ``network`` section of the runtime config (``cleanroom.config.NetworkConfig``)."""

    @property
    def uplink_netns(self) -> str | None: ...

    @property
    def resolvers(self) -> tuple[str, ...] | None: ...


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
    def guest(self) -> GuestNetwork:
        """The guest agent's eth0 settings."""
        return GuestNetwork(
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

    @property
    def allowed(self) -> int:
        """Allowed DNS answers plus accepted new flows."""
        return self.dns_allowed + self.connections_allowed

    @property
    def blocked(self) -> int:
        """Refused DNS queries plus blocked packets."""
        return self.dns_refused + self.connections_blocked

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {
            "mode": "filtered",
            "allowed": self.allowed,
            "blocked": self.blocked,
            "dns_allowed": self.dns_allowed,
            "dns_refused": self.dns_refused,
            "connections_allowed": self.connections_allowed,
            "connections_blocked": self.connections_blocked,
            "blocked_destinations": self.blocked_destinations,
            "network_cleanup_ms": self.network_cleanup_ms,
            "events": self.events_path,
        }


@dataclass
class _Live:
    """Mutable state of one run's network while it exists (private to the manager)."""

    run_id: str
    netns: str
    audit: AuditLog
    link: LinkPlan | None = None
    upstream: UpstreamClient | None = None
    dns: DnsFilter | None = None
    sockets: list[socket.socket] = field(default_factory=list)


def system_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, ...]:
    """IPv4 ``nameserver`` entries of ``resolv_conf`` (empty if unreadable)."""
    try:
        text = resolv_conf.read_text(encoding="utf-8")
    except OSError:
        return ()
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                if isinstance(ipaddress.ip_address(parts[1]), ipaddress.IPv4Address):
                    out.append(parts[1])
    return tuple(out)


def _make_sockets(gateway: str) -> list[socket.socket]:
    """Inside the run namespace: turn on forwarding and open the resolver's sockets."""
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    made: list[socket.socket] = []
    try:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        made.append(udp)
        udp.bind((gateway, 53))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        made.append(tcp)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((gateway, 53))
        tcp.listen(64)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        made.append(upstream)
        upstream.bind(("0.0.0.0", 0))  # noqa: S104 - inside the run namespace only
        for sock in made:
            sock.setblocking(False)  # noqa: FBT003 - stdlib signature
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


class NetworkManager:
    """Sets up and tears down run networks (one instance per server).

    ``pool`` is the private IPv4 block run links are carved from; ``prefix``
    names everything this manager owns (namespaces), so :meth:`reconcile` can
    find leftovers; ``ttl_floor`` is the minimum lifetime (s) of addresses
    learned from DNS answers.
    """

    def __init__(
        self,
        config: NetworkSettings,
        *,
        pool: ipaddress.IPv4Network = DEFAULT_POOL,
        prefix: str = DEFAULT_PREFIX,
        ttl_floor: int = 60,
    ) -> None:
        self.uplink_netns = config.uplink_netns
        self.resolvers = (
            tuple(config.resolvers) if config.resolvers is not None else system_resolvers()
        )
        self.pool = pool
        self.prefix = prefix
        self.ttl_floor = ttl_floor
        self._slot_lock = asyncio.Lock()
        self._uplink_ready = False
        self._live: dict[str, _Live] = {}
        self._finished: dict[str, NetworkSummary] = {}

    # -- naming -------------------------------------------------------------------------

    def netns_name(self, run_id: str) -> str:
        """The run's namespace name: the prefix and the last 12 letters/digits of the run id
        (without its ``run-``)."""
        short = re.sub(r"[^a-z0-9]", "", run_id.lower().removeprefix("run-"))[-12:]
        if not short:
            raise NetworkSetupFailed(f"run id {run_id!r} has no usable characters")
        return f"{self.prefix}{short}"

    def _uplink(self, argv: list[str]) -> list[str]:
        """An ``ip`` argv aimed at the uplink namespace."""
        if self.uplink_netns is None:
            return ["ip", *argv]
        return ["ip", "-n", self.uplink_netns, *argv]

    # -- setup --------------------------------------------------------------------------

    async def setup(
        self,
        run_id: str,
        policy: CompiledPolicy,
        run_dir: Path,
        *,
        fake_guest_netns: str | None = None,
    ) -> RunNetwork:
        """Create the run's namespace, links, firewall and resolver.

        ``fake_guest_netns`` is for tests only: besides the TAP (created as in
        production), a veth pair links the run namespace to that existing
        namespace, whose ``eth0`` gets the guest's address, MAC and route, and
        the firewall treats it as the guest interface. Raises
        ``NetworkSetupFailed``; on any failure (or cancellation) everything
        created so far is removed.
        """
        started = time.monotonic()
        netns = self.netns_name(run_id)
        if netns in self._live:
            raise NetworkSetupFailed(
                f"run {run_id} already has a network", details={"netns": netns}
            )
        live = _Live(run_id, netns, AuditLog(run_id, run_dir / EVENTS_FILE))
        try:
            return await self._setup(live, policy, fake_guest_netns, started)
        except BaseException as exc:
            await asyncio.shield(self._destroy(live))
            if isinstance(exc, CleanroomError | asyncio.CancelledError):
                raise
            if isinstance(exc, OSError | ValueError):
                raise NetworkSetupFailed(
                    f"network setup for run {run_id} failed: {exc}", details={"netns": netns}
                ) from exc
            raise

    async def _setup(
        self, live: _Live, policy: CompiledPolicy, fake_guest: str | None, started: float
    ) -> RunNetwork:
        netns = live.netns
        await run_command(["ip", "netns", "add", netns])
        self._live[live.run_id] = live
        await self._ensure_uplink()
        link = await self._claim_slot(netns)
        live.link = link
        mac = guest_mac(live.run_id)
        guest_if = _FAKE_GUEST_IF if fake_guest else link.tap
        await run_command(
            self._uplink(
                ["addr", "add", f"{link.uplink_address}/{GUEST_PREFIX}", "dev", link.uplink_veth]
            )
        )
        await run_command(self._uplink(["link", "set", link.uplink_veth, "up"]))
        batch = [
            "link set lo up",
            f"addr add {link.run_address}/{GUEST_PREFIX} dev {link.run_veth}",
            f"link set {link.run_veth} up",
            f"route add default via {link.uplink_address}",
            f"tuntap add dev {link.tap} mode tap",
            f"link set {link.tap} up",
        ]
        if fake_guest:
            batch.append(f"link add {_FAKE_GUEST_IF} type veth peer name eth0 netns {fake_guest}")
            batch.append(f"link set {_FAKE_GUEST_IF} up")
        batch.append(f"addr add {link.gateway}/{GUEST_PREFIX} dev {guest_if}")
        await run_command(["ip", "-n", netns, "-batch", "-"], stdin="\n".join(batch) + "\n")
        if fake_guest:
            await run_command(
                ["ip", "-n", fake_guest, "-batch", "-"],
                stdin=(
                    f"link set eth0 address {mac}\nlink set eth0 up\nlink set lo up\n"
                    f"addr add {link.guest}/{GUEST_PREFIX} dev eth0\n"
                    f"route add default via {link.gateway}\n"
                ),
            )
        gateway = str(link.gateway)
        live.sockets = await call_in_netns(netns, lambda: _make_sockets(gateway))
        udp_sock, tcp_sock, upstream_sock = live.sockets
        resolvers = self._checked_resolvers(policy)
        live.upstream = UpstreamClient(resolvers)
        await live.upstream.start(upstream_sock)

        resolution_started = time.monotonic()
        learned, learned_denied = await self._resolve_at_setup(live, policy)
        resolution_ms = (time.monotonic() - resolution_started) * 1000

        rules = RunRules(
            link=link,
            guest_if=guest_if,
            pool=self.pool,
            resolvers=tuple(ipaddress.IPv4Address(r) for r in resolvers),
            uplink_local=await self._uplink_addresses(),
            allowed=allowed_elements(policy),
            denied=denied_elements(policy),
            learned=learned,
            learned_denied=learned_denied,
        )
        await run_command(in_netns(netns, ["nft", "-f", "-"]), stdin=run_ruleset(rules))

        async def learn(
            addresses: tuple[ipaddress.IPv4Address, ...], ports: tuple[int, ...], ttl: int
        ) -> None:
            timed = [(e, ttl) for e in _elements_for(addresses, ports)]
            await run_command(
                in_netns(netns, ["nft", "-f", "-"]), stdin=add_elements("allowed", timed)
            )

        live.dns = DnsFilter(policy, live.upstream, learn, live.audit, ttl_floor=self.ttl_floor)
        await live.dns.serve(udp_sock, tcp_sock)
        setup_ms = (time.monotonic() - started) * 1000
        return RunNetwork(
            run_id=live.run_id,
            netns=netns,
            attachment=NetworkAttachment(netns=netns, tap=link.tap, mac=mac),
            address=str(link.guest),
            prefix=GUEST_PREFIX,
            gateway=gateway,
            dns=gateway,
            mac=mac,
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

    async def _resolve_at_setup(
        self, live: _Live, policy: CompiledPolicy
    ) -> tuple[tuple[tuple[Element, int], ...], tuple[tuple[Element, int], ...]]:
        """Resolve allowed exact names (and denied exact names) once, so the first
        connection needs no query and denied names stay blocked by address."""
        assert live.upstream is not None
        upstream = live.upstream
        allowed_names = exact_allowed_names(policy)
        denied = denied_names(policy)

        async def one(name: str) -> tuple[str, Any]:
            try:
                return name, await upstream.query(name, "A")
            except UpstreamFailed as exc:
                return name, exc

        results = await asyncio.gather(*(one(n) for n in (*allowed_names, *(n for n, _ in denied))))
        answers = dict(results)
        learned: list[tuple[Element, int]] = []
        for name in allowed_names:
            verdict = name_verdict(policy, name)
            answer = answers[name]
            if isinstance(answer, UpstreamFailed):
                live.audit.write(
                    "resolved", name=name, answers=[], error=str(answer), purpose="allow"
                )
                continue
            ttl = max(answer.ttl, self.ttl_floor)
            if verdict.allowed:
                learned += [(e, ttl) for e in _elements_for(answer.addresses, verdict.ports)]
            live.audit.write(
                "resolved",
                name=name,
                answers=[str(a) for a in answer.addresses],
                ports=list(verdict.ports),
                rule=verdict.rule,
                purpose="allow",
            )
        learned_denied: list[tuple[Element, int]] = []
        for name, ports in denied:
            answer = answers[name]
            if isinstance(answer, UpstreamFailed):
                continue
            ttl = max(answer.ttl, self.ttl_floor)
            for address in answer.addresses:
                net = ipaddress.IPv4Network(address)
                for proto in PROTOCOLS:
                    if ports is None:
                        learned_denied.append((Element(net, proto, 0, 65535), ttl))
                    else:
                        learned_denied += [(Element(net, proto, p, p), ttl) for p in ports]
            live.audit.write(
                "resolved", name=name, answers=[str(a) for a in answer.addresses], purpose="deny"
            )
        return tuple(learned), tuple(learned_denied)

    async def _ensure_uplink(self) -> None:
        """Apply the uplink table and turn on forwarding there (once per manager)."""
        if self._uplink_ready:
            return
        await run_command(
            in_netns(self.uplink_netns, ["nft", "-f", "-"]), stdin=uplink_ruleset(self.pool)
        )
        await run_command(
            in_netns(self.uplink_netns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        )
        self._uplink_ready = True

    async def _claim_slot(self, netns: str) -> LinkPlan:
        """Create the veth pair for the lowest free slot; the uplink-side name is the claim."""
        async with self._slot_lock:
            listing = await run_command(self._uplink(["-j", "link", "show"]))
            taken = {
                int(m.group(1))
                for entry in json.loads(listing.stdout or "[]")
                if (m := re.fullmatch(rf"{UPLINK_VETH_PREFIX}(\d+)", entry.get("ifname", "")))
            }
            free = (s for s in range(slot_count(self.pool)) if s not in taken)
            for _ in range(_MAX_SLOT_TRIES):
                slot = next(free, None)
                if slot is None:
                    break
                link = plan_slot(self.pool, slot)
                result = await run_command(
                    self._uplink(
                        [
                            "link",
                            "add",
                            link.uplink_veth,
                            "type",
                            "veth",
                            "peer",
                            "name",
                            link.run_veth,
                            "netns",
                            netns,
                        ]
                    ),
                    check=False,
                )
                if result.returncode == 0:
                    return link
                # Another process may have claimed this slot meanwhile: try the next one;
                # anything else is a real failure.
                exists = await run_command(
                    self._uplink(["link", "show", "dev", link.uplink_veth]), check=False
                )
                if exists.returncode != 0:
                    raise NetworkSetupFailed(
                        f"cannot create veth {link.uplink_veth}: {result.stderr.strip()}",
                        details={"netns": netns, "stderr": result.stderr},
                    )
        raise NetworkSetupFailed(f"no free network slot in {self.pool}", details={"netns": netns})

    async def _uplink_addresses(self) -> tuple[ipaddress.IPv4Address, ...]:
        """The uplink namespace's own IPv4 addresses (guarded from every run)."""
        listing = await run_command(self._uplink(["-j", "-4", "addr", "show"]))
        out: list[ipaddress.IPv4Address] = []
        for entry in json.loads(listing.stdout or "[]"):
            for info in entry.get("addr_info", []):
                if info.get("family") == "inet" and "local" in info:
                    out.append(ipaddress.IPv4Address(info["local"]))
        return tuple(dict.fromkeys(out))

    # -- teardown -----------------------------------------------------------------------

    async def teardown(self, rn: RunNetwork) -> NetworkSummary:
        """Remove everything of the run and write its blocked-traffic events.

        Idempotent: a second call returns the first summary. Never raises for
        cleanup trouble (it is logged); the namespace is always deleted.
        """
        done = self._finished.get(rn.run_id)
        if done is not None:
            return done
        live = self._live.get(rn.run_id)
        if live is None:
            return await self._teardown_unknown(rn)
        started = time.monotonic()
        counts = await self._collect(live)
        await self._destroy(live)
        summary = NetworkSummary(
            run_id=live.run_id,
            dns_allowed=live.audit.dns_allowed,
            dns_refused=live.audit.dns_refused,
            connections_allowed=counts[0],
            connections_blocked=counts[1],
            blocked_destinations=counts[2],
            network_cleanup_ms=round((time.monotonic() - started) * 1000, 3),
            events_path=str(live.audit.path),
        )
        self._finished[rn.run_id] = summary
        return summary

    async def _teardown_unknown(self, rn: RunNetwork) -> NetworkSummary:
        """Teardown of a run this manager never set up (or forgot): just delete its namespace."""
        started = time.monotonic()
        await run_command(["ip", "netns", "del", rn.netns], check=False)
        return NetworkSummary(
            rn.run_id, 0, 0, 0, 0, 0, round((time.monotonic() - started) * 1000, 3), ""
        )

    async def _collect(self, live: _Live) -> tuple[int, int, int]:
        """Read the firewall's counters and blocked sets into audit events.

        Returns (accepted new flows, blocked packets, blocked destinations).
        """
        if live.dns is not None:
            await live.dns.close()
        result = await run_command(
            in_netns(live.netns, ["nft", "-j", "list", "table", "inet", RUN_TABLE]), check=False
        )
        if result.returncode != 0:
            log.warning("cannot read the firewall of %s: %s", live.netns, result.stderr.strip())
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
                live.audit.write("blocked", **event)
                blocked_packets += event["count"]
                destinations += 1
        return allowed, blocked_packets, destinations

    async def _destroy(self, live: _Live) -> None:
        """Stop the resolver, close sockets, delete the namespace (and with it the links)."""
        if live.dns is not None:
            await live.dns.close()
        if live.upstream is not None:
            live.upstream.close()
        for sock in live.sockets:
            sock.close()
        live.audit.close()
        await _delete_netns(live.netns)
        self._live.pop(live.run_id, None)

    # -- reconcile ----------------------------------------------------------------------

    async def reconcile(self) -> list[str]:
        """Delete namespaces carrying this manager's prefix that no live run owns
        (leftovers of a crashed server); returns and logs their names. Their
        TAPs, veths and tables go with them."""
        listing = await run_command(["ip", "-j", "netns", "list"], check=False)
        names = [
            entry.get("name", "")
            for entry in (json.loads(listing.stdout) if listing.stdout.strip() else [])
        ]
        owned = {live.netns for live in self._live.values()}
        removed: list[str] = []
        for name in names:
            owned_by_us = name.startswith(self.prefix) and name not in owned
            if owned_by_us and await _delete_netns(name):
                removed.append(name)
                log.warning("removed leftover network namespace %s", name)
        return removed


async def _delete_netns(name: str) -> bool:
    """Delete a run namespace; True if it existed and is gone.

    The run-side veth is deleted first: that removes both ends at once,
    whereas the kernel tears a deleted namespace's devices down asynchronously,
    which would leave the uplink end visible for a moment.
    """
    await run_command(["ip", "-n", name, "link", "del", "veth0"], check=False)
    result = await run_command(["ip", "netns", "del", name], check=False)
    if result.returncode != 0 and "No such file" not in result.stderr:
        log.warning("cannot delete namespace %s: %s", name, result.stderr.strip())
    return result.returncode == 0


def _elements_for(
    addresses: tuple[ipaddress.IPv4Address, ...], ports: tuple[int, ...]
) -> list[Element]:
    return [
        Element(ipaddress.IPv4Network(a), proto, p, p)
        for a in addresses
        for p in ports
        for proto in PROTOCOLS
    ]


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
