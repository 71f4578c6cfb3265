"""The boot gate lets at most ``limit`` boots run at once and reports the wait."""

from __future__ import annotations

import asyncio

import pytest

from cleanroom.service.boots import BootGate, default_boot_limit


async def test_gate_limits_concurrency_and_reports_waits() -> None:
    gate = BootGate(2)
    running = 0
    peak = 0
    waits: list[float] = []

    async def boot() -> None:
        nonlocal running, peak
        async with gate.turn() as waited:
            waits.append(waited)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.05)
            running -= 1

    await asyncio.gather(*(boot() for _ in range(6)))
    assert peak == 2
    assert sum(1 for w in waits if w > 20) >= 3  # the later four had to wait


def test_limits() -> None:
    assert default_boot_limit() >= 1
    with pytest.raises(ValueError, match="at least 1"):
        BootGate(0)
