"""A network layer for policies without allow rules: never asked for a network."""

from __future__ import annotations

from pathlib import Path

from cleanroom.network import NetworkSlot, NetworkSummary, RunNetwork
from cleanroom.policy import CompiledPolicy


class NoNetwork:
    """Conforms to ``cleanroom.service.network.NetworkLayer``; only ``reconcile`` may be used."""

    def __init__(self) -> None:
        self.reconciled = 0

    async def setup(self, run_id: str, policy: CompiledPolicy, run_dir: Path) -> RunNetwork:
        raise AssertionError("a policy without allow rules needs no network")

    async def reserve(self, owner_id: str) -> NetworkSlot:
        raise AssertionError("no pooled guest was asked for")

    async def activate(
        self, slot: NetworkSlot, run_id: str, policy: CompiledPolicy, run_dir: Path
    ) -> RunNetwork:
        raise AssertionError("no slot was reserved")

    async def teardown(self, target: RunNetwork | NetworkSlot) -> NetworkSummary:
        raise AssertionError("no lease was made")

    async def reconcile(self) -> list[str]:
        self.reconciled += 1
        return []
