"""What the service needs from the network layer, and the handles runs hold.

The network layer (``cleanroom.network.NetworkManager``) is reached only
through the Protocols here; it conforms structurally, which mypy checks where
the service binds it (:func:`bind_network`). A provider's lease and slot
types are its own (type parameters), so binding closes each lease or slot
over the provider that made it: runs and the warm pool then hold plain
:class:`Lease` and :class:`Slot` handles that know how to release
themselves, and nothing downstream needs the provider's types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from cleanroom.netspec import GuestInterface, NetworkAttachment
from cleanroom.policy import CompiledPolicy
from cleanroom.service.record import JsonValue

__all__ = [
    "Lease",
    "LeaseT",
    "NetworkLayer",
    "NetworkLease",
    "NetworkProvider",
    "NetworkSlot",
    "RunNetworks",
    "Slot",
    "SlotProvider",
    "SlotT",
    "TeardownSummary",
    "bind_network",
]


class NetworkLease(Protocol):
    """A run's prepared network: ``attachment`` for the backend, ``guest`` for the agent."""

    @property
    def attachment(self) -> NetworkAttachment: ...

    @property
    def guest(self) -> GuestInterface: ...

    @property
    def timings(self) -> Mapping[str, float]:
        """At least ``policy_resolution_ms`` (milliseconds)."""
        ...


class NetworkSlot(Protocol):
    """A reserved network whose table drops everything, for a guest booted ahead of a run."""

    @property
    def attachment(self) -> NetworkAttachment: ...


class TeardownSummary(Protocol):
    """What a run's network saw, as the run record's ``network`` object."""

    def to_dict(self) -> Mapping[str, JsonValue]: ...


LeaseT = TypeVar("LeaseT", bound=NetworkLease)
SlotT = TypeVar("SlotT", bound=NetworkSlot)


class NetworkProvider(Protocol[LeaseT]):
    """Sets up and tears down run networks; removes a crashed server's leftovers."""

    async def setup(self, run_id: str, policy: CompiledPolicy, run_dir: Path) -> LeaseT:
        """A network for one run (raises ``NetworkSetupFailed``; leaves nothing behind)."""
        ...

    async def teardown(self, target: LeaseT) -> TeardownSummary:
        """Remove ``target`` (idempotent; never raises for cleanup trouble)."""
        ...

    async def reconcile(self) -> Sequence[str]:
        """Remove leftovers of a previous server; returns what was removed."""
        ...


class SlotProvider(Protocol[SlotT, LeaseT]):
    """Two-phase run networks: reserve a drop-all slot at boot, activate it for a run."""

    async def reserve(self, owner_id: str) -> SlotT:
        """A slot whose table drops everything (raises ``NetworkSetupFailed``)."""
        ...

    async def activate(
        self, slot: SlotT, run_id: str, policy: CompiledPolicy, run_dir: Path
    ) -> LeaseT:
        """Open ``slot`` for one run's policy (on failure the slot is removed)."""
        ...

    async def teardown(self, target: SlotT | LeaseT) -> TeardownSummary:
        """Remove a slot or a lease (idempotent)."""
        ...


class NetworkLayer(NetworkProvider[LeaseT], SlotProvider[SlotT, LeaseT], Protocol[LeaseT, SlotT]):
    """Everything the service uses of the network layer."""

    async def teardown(self, target: SlotT | LeaseT) -> TeardownSummary: ...


Release = Callable[[], Awaitable[TeardownSummary]]


@dataclass(frozen=True)
class Lease:
    """A run's network, released through :meth:`release`."""

    attachment: NetworkAttachment
    guest: GuestInterface
    policy_resolution_ms: float | None
    release: Release
    """Tear the network down and summarize it (idempotent)."""


@dataclass(frozen=True)
class Slot:
    """A reserved (drop-all) network slot; :meth:`activate` turns it into a :class:`Lease`."""

    attachment: NetworkAttachment
    activate: Callable[[str, CompiledPolicy, Path], Awaitable[Lease]]
    """``(run_id, policy, run_dir)``: open the slot for a run (on failure it is removed)."""
    release: Release
    """Remove the slot (after activation: the lease, idempotent)."""


@dataclass(frozen=True)
class RunNetworks:
    """A bound network layer: makes leases and slots that carry their own release."""

    setup: Callable[[str, CompiledPolicy, Path], Awaitable[Lease]]
    """``(run_id, policy, run_dir)``: a network for one run."""
    reserve: Callable[[str], Awaitable[Slot]]
    """``(owner_id)``: a drop-all slot for a guest booted ahead of a run."""
    reconcile: Callable[[], Awaitable[Sequence[str]]]


def bind_network(provider: NetworkLayer[LeaseT, SlotT]) -> RunNetworks:
    """Bind ``provider`` (e.g. a ``NetworkManager``) into lease- and slot-making handles."""

    def lease(raw: LeaseT) -> Lease:
        async def release() -> TeardownSummary:
            return await provider.teardown(raw)

        return Lease(
            attachment=raw.attachment,
            guest=raw.guest,
            policy_resolution_ms=raw.timings.get("policy_resolution_ms"),
            release=release,
        )

    async def setup(run_id: str, policy: CompiledPolicy, run_dir: Path) -> Lease:
        return lease(await provider.setup(run_id, policy, run_dir))

    async def reserve(owner_id: str) -> Slot:
        raw = await provider.reserve(owner_id)

        async def activate(run_id: str, policy: CompiledPolicy, run_dir: Path) -> Lease:
            return lease(await provider.activate(raw, run_id, policy, run_dir))

        async def release() -> TeardownSummary:
            return await provider.teardown(raw)

        return Slot(attachment=raw.attachment, activate=activate, release=release)

    return RunNetworks(setup=setup, reserve=reserve, reconcile=provider.reconcile)
