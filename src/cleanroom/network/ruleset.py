"""The nftables rulesets, as text applied in one ``nft -f -`` transaction.

:func:`run_ruleset` builds the per-run table (family ``inet``, named
:data:`RUN_TABLE`) that lives in the run namespace and disappears with it:

- IPv6 is recorded (TCP/UDP destination and port in ``blocked6``) and dropped
  at prerouting, before any routing decision;
- forward: established/related pass; only the guest interface may open new
  flows; non-TCP/UDP is blocked; ``denied`` (deny rules, static and learned
  from DNS, never expiring while the run lives) is checked first, then
  ``forbidden`` (the host's own addresses and the link pool holding every
  run's addresses: no rule opens them), then the guarded ranges
  (:data:`~cleanroom.network.guard.SPECIAL_RANGES`: RFC 1918, CGNAT,
  link-local, loopback, multicast, reserved) pass only for elements of a
  static IP/CIDR rule naming the range or a sub-range (``explicit``), then
  the uplink's own addresses pass only for allowed elements, then
  ``allowed`` accepts;
- everything else jumps to ``blocked``, which adds ``daddr . proto . dport``
  to the dynamic ``blocked`` set with a per-element counter (read at
  teardown for the audit) and rejects, so the guest fails fast;
- input: only DNS (UDP/TCP 53) from the guest to the gateway (the run's
  resolver); output: only the resolver's queries to the upstream resolvers
  and traffic towards the guest;
- postrouting: masquerade out of the run's veth, so the uplink only needs the
  directly connected veth ``/30``.

:func:`uplink_ruleset` builds the uplink's table (:data:`UPLINK_TABLE`): NAT of
the pool towards the outside, and no new connections from run links into the
uplink itself or between run links.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cleanroom.network.addressing import UPLINK_VETH_PREFIX, LinkPlan
from cleanroom.network.egress import Element, prune_covered
from cleanroom.network.guard import SPECIAL_RANGES

__all__ = [
    "GUARDED_RANGES",
    "RUN_TABLE",
    "UPLINK_TABLE",
    "RunRules",
    "add_elements",
    "add_permanent_elements",
    "drop_all_ruleset",
    "explicit_elements",
    "run_ruleset",
    "uplink_ruleset",
]

RUN_TABLE = "cleanroom"
UPLINK_TABLE = "cleanroom-uplink"
DNS_LEARNED_FLOOR_S = 60

GUARDED_RANGES: tuple[ipaddress.IPv4Network, ...] = tuple(net for net, _ in SPECIAL_RANGES)
"""Never reachable unless a static IP/CIDR rule names an address inside them."""


@dataclass(frozen=True)
class RunRules:
    """Everything the run table is built from."""

    link: LinkPlan
    guest_if: str
    pool: ipaddress.IPv4Network
    resolvers: tuple[ipaddress.IPv4Address, ...]
    uplink_local: tuple[ipaddress.IPv4Address, ...]
    allowed: tuple[Element, ...]
    denied: tuple[Element, ...]
    learned: tuple[tuple[Element, int], ...] = ()
    """DNS-learned allow elements with their timeout in seconds."""
    learned_denied: tuple[Element, ...] = ()
    """Deny elements for the addresses of denied names (no timeout: they last the run)."""
    host_addresses: tuple[ipaddress.IPv4Address, ...] = ()
    """The host's own addresses: with ``pool``, the ``forbidden`` set no rule opens."""

    def forbidden(self) -> tuple[ipaddress.IPv4Network, ...]:
        """Host addresses and the pool, collapsed into non-overlapping blocks."""
        nets = [ipaddress.IPv4Network(a) for a in self.host_addresses]
        return tuple(ipaddress.collapse_addresses([*nets, self.pool]))


def explicit_elements(
    allowed: Iterable[Element], guarded: Iterable[ipaddress.IPv4Network]
) -> tuple[Element, ...]:
    """The static allow elements that lie wholly inside a guarded range (named explicitly)."""
    ranges = tuple(guarded)
    return tuple(e for e in allowed if any(e.network.subnet_of(g) for g in ranges))


def _elements(static: Iterable[Element], timed: Iterable[tuple[Element, int]]) -> str:
    # nft rejects an interval element inside another one of the same set definition.
    kept = prune_covered(static)
    items = [e.nft() for e in kept]
    items += [f"{e.nft()} timeout {t}s" for e, t in timed if not any(k.covers(e) for k in kept)]
    unique = list(dict.fromkeys(items))
    return f"\t\telements = {{ {', '.join(unique)} }}\n" if unique else ""


def _addr_set(name: str, addrs: Iterable[object]) -> str:
    items = list(dict.fromkeys(str(a) for a in addrs))
    body = f"\t\telements = {{ {', '.join(items)} }}\n" if items else ""
    return f"\tset {name} {{\n\t\ttype ipv4_addr\n\t\tflags interval\n{body}\t}}\n"


_TUPLE = "ip daddr . meta l4proto . th dport"
_CONCAT = "ipv4_addr . inet_proto . inet_service"


def run_ruleset(rules: RunRules) -> str:
    """The run namespace's complete table (see the module docstring)."""
    link = rules.link
    guarded = GUARDED_RANGES
    explicit = explicit_elements(rules.allowed, guarded)
    gif = rules.guest_if
    veth = link.run_veth
    resolvers = ", ".join(str(r) for r in rules.resolvers) or str(link.gateway)
    addr_sets = (
        _addr_set("forbidden", rules.forbidden())
        + _addr_set("guarded", guarded)
        + _addr_set("uplink_local", rules.uplink_local)
    )
    return f"""table inet {RUN_TABLE}
delete table inet {RUN_TABLE}
table inet {RUN_TABLE} {{
\tset allowed {{
\t\ttype {_CONCAT}
\t\tflags interval, timeout
{_elements(rules.allowed, rules.learned)}\t}}
\tset denied {{
\t\ttype {_CONCAT}
\t\tflags interval, timeout
{_elements((*rules.denied, *rules.learned_denied), ())}\t}}
\tset explicit {{
\t\ttype {_CONCAT}
\t\tflags interval
{_elements(explicit, ())}\t}}
{addr_sets}\tset blocked {{
\t\ttype {_CONCAT}
\t\tsize 65535
\t\tflags dynamic
\t\tcounter
\t}}
\tset blocked_other {{
\t\ttype ipv4_addr . inet_proto
\t\tsize 65535
\t\tflags dynamic
\t\tcounter
\t}}
\tset blocked6 {{
\t\ttype ipv6_addr . inet_proto . inet_service
\t\tsize 65535
\t\tflags dynamic
\t\tcounter
\t}}
\tcounter allowed_new {{ }}
\tcounter dns_queries {{ }}

\tchain blocked {{
\t\tmeta l4proto {{ tcp, udp }} add @blocked {{ {_TUPLE} }} reject with icmpx admin-prohibited
\t\tadd @blocked_other {{ ip daddr . meta l4proto }} drop
\t}}

\tchain prerouting {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tmeta nfproto ipv6 meta l4proto {{ tcp, udp }} \\
\t\t\tadd @blocked6 {{ ip6 daddr . meta l4proto . th dport }} drop
\t\tmeta nfproto ipv6 drop
\t}}

\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tct state invalid drop
\t\tiifname != "{gif}" drop
\t\tmeta l4proto != {{ tcp, udp }} goto blocked
\t\t{_TUPLE} @denied goto blocked
\t\tip daddr @forbidden goto blocked
\t\tip daddr @guarded {_TUPLE} != @explicit goto blocked
\t\tip daddr @uplink_local {_TUPLE} != @allowed goto blocked
\t\t{_TUPLE} @allowed counter name "allowed_new" accept
\t\tgoto blocked
\t}}

\tchain input {{
\t\ttype filter hook input priority filter; policy drop;
\t\tiif "lo" accept
\t\tct state established,related accept
\t\tiifname "{gif}" ip daddr {link.gateway} meta l4proto {{ tcp, udp }} th dport 53 \\
\t\t\tcounter name "dns_queries" accept
\t\tiifname "{gif}" goto blocked
\t}}

\tchain output {{
\t\ttype filter hook output priority filter; policy drop;
\t\toif "lo" accept
\t\tct state established,related accept
\t\toifname "{gif}" accept
\t\toifname "{veth}" ip daddr {{ {resolvers} }} meta l4proto {{ tcp, udp }} th dport 53 accept
\t}}

\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "{veth}" masquerade
\t}}
}}
"""


_DROP_ALL_HOOKS = (
    ("prerouting", "raw"),
    ("input", "filter"),
    ("forward", "filter"),
    ("output", "filter"),
)


def drop_all_ruleset() -> str:
    """The run table of a reserved slot: every packet in, out or through is dropped.

    A pooled guest's TAP exists from boot, so its namespace holds this table
    until a run activates the slot; :func:`run_ruleset` then replaces it in
    one transaction (it starts with ``delete table``), so there is never a
    moment without a table.
    """
    chains = "".join(
        f"\tchain {hook} {{\n\t\ttype filter hook {hook} priority {priority}; policy drop;\n\t}}\n"
        for hook, priority in _DROP_ALL_HOOKS
    )
    head = f"table inet {RUN_TABLE}\ndelete table inet {RUN_TABLE}\n"
    return f"{head}table inet {RUN_TABLE} {{\n{chains}}}\n"


def add_elements(set_name: str, timed: Iterable[tuple[Element, int]]) -> str:
    """An ``nft -f`` script that puts timed elements into a run-table set, in one transaction.

    nft keeps an existing element's old timeout on ``add``, so each element is
    added (a no-op when present), deleted and added again with the new
    timeout; the transaction is atomic, so the element is never missing.
    """
    lines: list[str] = []
    for element, timeout in timed:
        text = element.nft()
        lines.append(f"add element inet {RUN_TABLE} {set_name} {{ {text} }}")
        lines.append(f"delete element inet {RUN_TABLE} {set_name} {{ {text} }}")
        lines.append(f"add element inet {RUN_TABLE} {set_name} {{ {text} timeout {timeout}s }}")
    return "\n".join(lines) + "\n"


def add_permanent_elements(set_name: str, elements: Iterable[Element]) -> str:
    """An ``nft -f`` script adding elements without a timeout (they last as long as
    the table: used for the addresses of denied names, which must never lapse)."""
    items = list(dict.fromkeys(e.nft() for e in elements))
    lines = [f"add element inet {RUN_TABLE} {set_name} {{ {item} }}" for item in items]
    return "\n".join(lines) + "\n"


def uplink_ruleset(pool: ipaddress.IPv4Network) -> str:
    """The uplink table: NAT for the pool, no new connections from run links to
    run-link addresses (the uplink's own veth ends, other runs).

    Defence in depth: each run table already blocks these. The uplink's other
    addresses are guarded per run (``uplink_local``), because in test
    topologies the uplink namespace itself hosts the allowed servers.
    """
    runs = f'"{UPLINK_VETH_PREFIX}*"'
    return f"""table inet {UPLINK_TABLE}
delete table inet {UPLINK_TABLE}
table inet {UPLINK_TABLE} {{
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname {runs} ct state established,related accept
\t\tiifname {runs} ip daddr {pool} drop
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname {runs} oifname {runs} drop
\t\tiifname {runs} ip daddr {pool} drop
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr {pool} oifname != {runs} masquerade
\t}}
}}
"""
