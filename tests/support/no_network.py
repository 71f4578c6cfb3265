"""The public test network layer, counting its reconciles (service tests check them)."""

from __future__ import annotations

from cleanroom.testing import NoNetwork as _PublicNoNetwork


class NoNetwork(_PublicNoNetwork):
    """``cleanroom.testing.NoNetwork`` (refuses every network) that counts ``reconcile`` calls."""

    def __init__(self) -> None:
        self.reconciled = 0

    async def reconcile(self) -> list[str]:
        self.reconciled += 1
        return await super().reconcile()
