"""ElementInstaller: what is installed is remembered, bursts share one nft run, the cap holds.

``apply`` is a recording double for one layer (the real ``nft`` is exercised by
the integration suite); it can be slowed down or made to fail.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from cleanroom.errors import NetworkSetupFailed
from cleanroom.network.egress import Element, prune_covered
from cleanroom.network.installer import ElementInstaller


def _el(host: str, port: int = 443) -> Element:
    return Element(ipaddress.IPv4Network(host), "tcp", port, port)


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.scripts: list[str] = []
        self.delay = delay
        self.fail = False

    async def __call__(self, script: str) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise NetworkSetupFailed("nft failed")
        self.scripts.append(script)


async def test_present_elements_cost_no_nft_run() -> None:
    rec = Recorder()
    inst = ElementInstaller(rec)
    assert await inst.allow([_el("192.0.2.10")], 60) == 0
    assert len(rec.scripts) == 1
    assert "192.0.2.10 . tcp . 443 timeout 60s" in rec.scripts[0]
    for _ in range(50):
        await inst.allow([_el("192.0.2.10")], 60)
    assert len(rec.scripts) == 1
    assert inst.installed("allowed") == 1
    # A longer lifetime than half what is left renews it.
    await inst.allow([_el("192.0.2.10")], 600)
    assert len(rec.scripts) == 2


async def test_a_burst_joins_one_batch_and_every_caller_waits_for_it() -> None:
    rec = Recorder(delay=0.05)
    inst = ElementInstaller(rec)
    results = await asyncio.gather(
        *(inst.allow([_el(f"198.51.100.{i}")], 60) for i in range(1, 41)),
        inst.deny([_el("203.0.113.9")]),
    )
    assert results[:40] == [0] * 40
    # The first caller starts a run; everyone who arrives while it runs shares the next.
    assert len(rec.scripts) <= 2
    assert inst.invocations == len(rec.scripts)
    joined = "".join(rec.scripts)
    assert all(f"198.51.100.{i} . tcp . 443 timeout 60s" in joined for i in range(1, 41))
    deny_line = "add element inet cleanroom denied { 203.0.113.9 . tcp . 443 }"
    assert deny_line in joined
    # Within one script, denies come before allows.
    script = next(s for s in rec.scripts if deny_line in s)
    if "allowed" in script:
        assert script.index(deny_line) < script.index("allowed")


async def test_denies_are_permanent_and_installed_once() -> None:
    rec = Recorder()
    inst = ElementInstaller(rec)
    await inst.deny([_el("203.0.113.9")])
    await inst.deny([_el("203.0.113.9")])
    assert len(rec.scripts) == 1
    assert "timeout" not in rec.scripts[0]


async def test_the_element_cap_leaves_out_new_elements_and_says_how_many() -> None:
    rec = Recorder()
    inst = ElementInstaller(rec, max_elements=3)
    left_out = await inst.allow([_el(f"198.51.100.{i}") for i in range(1, 6)], 60)
    assert left_out == 2
    assert inst.installed("allowed") == 3
    assert await inst.allow([_el("198.51.100.9")], 60) == 1
    # Renewing what is installed is still possible at the cap.
    assert await inst.allow([_el("198.51.100.1")], 6000) == 0


async def test_a_failed_run_reaches_its_waiters_and_installs_nothing() -> None:
    rec = Recorder()
    rec.fail = True
    inst = ElementInstaller(rec)
    with pytest.raises(NetworkSetupFailed):
        await inst.allow([_el("192.0.2.10")], 60)
    assert inst.installed("allowed") == 0
    rec.fail = False
    await inst.allow([_el("192.0.2.10")], 60)
    assert len(rec.scripts) == 1


async def test_close_cancels_a_running_batch() -> None:
    rec = Recorder(delay=10)
    inst = ElementInstaller(rec)
    waiter = asyncio.ensure_future(inst.allow([_el("192.0.2.10")], 60))
    await asyncio.sleep(0.01)
    await inst.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert rec.scripts == []


async def test_elements_inside_the_tables_own_elements_are_never_sent_to_nft() -> None:
    # nft refuses ("File exists") an interval element wholly inside one already in the set.
    rec = Recorder()
    inst = ElementInstaller(
        rec,
        static_allowed=[_el("192.0.2.0/24")],
        static_denied=[Element(ipaddress.IPv4Network("203.0.113.0/24"), "tcp", 0, 65535)],
    )
    assert await inst.allow([_el("192.0.2.10")], 60) == 0
    await inst.deny([_el("203.0.113.9")])
    assert rec.scripts == []
    await inst.allow([_el("192.0.2.10", 444), _el("192.0.3.10")], 60)
    assert len(rec.scripts) == 1
    # A narrower deny inside a wider learned one is skipped too.
    await inst.deny([Element(ipaddress.IPv4Network("198.51.100.9/32"), "udp", 0, 65535)])
    await inst.deny([Element(ipaddress.IPv4Network("198.51.100.9/32"), "udp", 53, 53)])
    assert len(rec.scripts) == 2


def test_prune_covered_keeps_only_the_widest_of_nested_elements() -> None:
    wide = _el("0.0.0.0/0", 8080)
    nested = _el("10.0.0.0/8", 8080)
    other_port = _el("10.0.0.0/8", 8081)
    ranged = Element(ipaddress.IPv4Network("10.3.0.5/32"), "tcp", 0, 65535)
    inside_range = Element(ipaddress.IPv4Network("10.3.0.5/32"), "tcp", 443, 443)
    udp = Element(ipaddress.IPv4Network("10.0.0.0/8"), "udp", 8080, 8080)
    got = prune_covered([nested, wide, other_port, wide, inside_range, ranged, udp])
    assert got == (wide, other_port, ranged, udp)
    assert wide.covers(nested)
    assert not nested.covers(wide)
    assert not _el("10.0.0.0/8", 8080).covers(udp)
