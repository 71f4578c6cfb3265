"""A run slot's links: the uplink table, the veth pair claimed by slot index, the TAP.

:class:`Links` creates, inside an existing run namespace, everything the
guest needs at layer 2/3 (loopback, the veth to the uplink with its ``/30``
and default route, the VMM's TAP with the gateway address) but no firewall
and no resolver: those belong to the slot's lifecycle in
:class:`~cleanroom.network.manager.NetworkManager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import socket
from pathlib import Path

from cleanroom.errors import NetworkSetupFailed
from cleanroom.network.addressing import (
    GUEST_PREFIX,
    UPLINK_VETH_PREFIX,
    LinkPlan,
    plan_slot,
    slot_count,
)
from cleanroom.network.commands import in_netns, run_command
from cleanroom.network.ruleset import uplink_ruleset

__all__ = ["FAKE_GUEST_IF", "Links", "make_sockets", "namespace_addresses", "system_resolvers"]

FAKE_GUEST_IF = "gst0"
_MAX_SLOT_TRIES = 64


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


def make_sockets(gateway: str) -> list[socket.socket]:
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


class Links:
    """Link plumbing between run namespaces and the uplink (one per manager)."""

    def __init__(self, uplink_netns: str | None, pool: ipaddress.IPv4Network) -> None:
        self.uplink_netns = uplink_netns
        self.pool = pool
        self._slot_lock = asyncio.Lock()
        self._uplink_ready = False

    def uplink(self, argv: list[str]) -> list[str]:
        """An ``ip`` argv aimed at the uplink namespace."""
        if self.uplink_netns is None:
            return ["ip", *argv]
        return ["ip", "-n", self.uplink_netns, *argv]

    async def ensure_uplink(self) -> None:
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

    async def build(self, netns: str, mac: str, fake_guest: str | None) -> LinkPlan:
        """Claim a slot and create its veth pair, addresses, route and TAP in ``netns``.

        ``fake_guest`` (tests only): also link ``netns`` to that existing
        namespace, whose ``eth0`` gets the guest's address, ``mac`` and route.
        """
        await self.ensure_uplink()
        link = await self._claim_slot(netns)
        guest_if = FAKE_GUEST_IF if fake_guest else link.tap
        await run_command(
            self.uplink(
                ["addr", "add", f"{link.uplink_address}/{GUEST_PREFIX}", "dev", link.uplink_veth]
            )
        )
        await run_command(self.uplink(["link", "set", link.uplink_veth, "up"]))
        batch = [
            "link set lo up",
            f"addr add {link.run_address}/{GUEST_PREFIX} dev {link.run_veth}",
            f"link set {link.run_veth} up",
            f"route add default via {link.uplink_address}",
            f"tuntap add dev {link.tap} mode tap",
            f"link set {link.tap} up",
        ]
        if fake_guest:
            batch.append(f"link add {FAKE_GUEST_IF} type veth peer name eth0 netns {fake_guest}")
            batch.append(f"link set {FAKE_GUEST_IF} up")
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
        return link

    async def _claim_slot(self, netns: str) -> LinkPlan:
        """Create the veth pair for the lowest free slot; the uplink-side name is the claim."""
        async with self._slot_lock:
            listing = await run_command(self.uplink(["-j", "link", "show"]))
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
                    self.uplink(
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
                    self.uplink(["link", "show", "dev", link.uplink_veth]), check=False
                )
                if exists.returncode != 0:
                    raise NetworkSetupFailed(
                        f"cannot create veth {link.uplink_veth}: {result.stderr.strip()}",
                        details={"netns": netns, "stderr": result.stderr},
                    )
        raise NetworkSetupFailed(f"no free network slot in {self.pool}", details={"netns": netns})

    async def uplink_addresses(self) -> tuple[ipaddress.IPv4Address, ...]:
        """The uplink namespace's own IPv4 addresses (guarded from every run)."""
        return await namespace_addresses(self.uplink_netns)


async def namespace_addresses(netns: str | None) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses of every interface in ``netns`` (None: this process's)."""
    argv = ["ip", "-j", "-4", "addr", "show"]
    listing = await run_command(argv if netns is None else ["ip", "-n", netns, *argv[1:]])
    out: list[ipaddress.IPv4Address] = []
    for entry in json.loads(listing.stdout or "[]"):
        for info in entry.get("addr_info", []):
            if info.get("family") == "inet" and "local" in info:
                out.append(ipaddress.IPv4Address(info["local"]))
    return tuple(dict.fromkeys(out))
