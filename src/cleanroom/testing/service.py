"""The real :class:`~cleanroom.service.Service` over the agent-process backend.

What server, client and CLI tests drive: every layer from the HTTP routes down
to the guest agent protocol is the product's own; only the VMM is replaced (by
:class:`~cleanroom.testing.AgentProcessBackend`) and there is no network layer
(policies with allow rules are refused at launch, as on a host that cannot
enforce them).
"""

from __future__ import annotations

import json
from pathlib import Path

from cleanroom import paths
from cleanroom.config import RuntimeConfig
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.network import NetworkSlot, NetworkSummary, RunNetwork
from cleanroom.policy import CompiledPolicy
from cleanroom.service import Service
from cleanroom.testing.backend import AgentProcessBackend, UnavailableBackend

__all__ = ["NoNetwork", "agent_service", "runs_with_status"]


class NoNetwork:
    """A network layer that has nothing to give: asked for a run's network, it fails.

    The service asks only for runs whose policy allows some egress, and the
    agent-process backend publishes no egress enforcement, so those runs are
    refused at launch before this is reached. Conforms to the service's
    ``NetworkLayer`` protocol; ``reconcile`` finds nothing to remove.
    """

    async def setup(self, run_id: str, policy: CompiledPolicy, run_dir: Path) -> RunNetwork:
        """Always raises ``RuntimeLaunchFailed``."""
        raise RuntimeLaunchFailed("the test service has no network layer")

    async def reserve(self, owner_id: str) -> NetworkSlot:
        """Always raises ``RuntimeLaunchFailed``."""
        raise RuntimeLaunchFailed("the test service has no network layer")

    async def activate(
        self, slot: NetworkSlot, run_id: str, policy: CompiledPolicy, run_dir: Path
    ) -> RunNetwork:
        """Always raises ``RuntimeLaunchFailed``."""
        raise RuntimeLaunchFailed("the test service has no network layer")

    async def teardown(self, target: RunNetwork | NetworkSlot) -> NetworkSummary:
        """Never reached (no lease or slot is ever made)."""
        raise RuntimeLaunchFailed("the test service has no network layer")

    async def reconcile(self) -> list[str]:
        """Nothing of this layer can be left over."""
        return []


def agent_service(
    backend: AgentProcessBackend | None = None, *, config: RuntimeConfig | None = None
) -> Service:
    """A real Service whose ``qemu`` backend is ``backend`` (a new one by default)
    and whose ``firecracker`` backend is always unavailable.

    Runs, logs and records go under the state directory (``$XDG_STATE_HOME``):
    point it at a temporary directory first.
    """
    return Service(
        config or RuntimeConfig(default_backend="qemu"),
        backends={
            "qemu": backend or AgentProcessBackend(),
            "firecracker": UnavailableBackend("firecracker"),
        },
        network=NoNetwork(),
    )


def runs_with_status(status: str, root: Path | None = None) -> list[str]:
    """Ids of the runs under ``root`` (default: the state directory's ``runs/``) whose
    finished record has ``status`` (``exited``, ``timeout``, ``cancelled``, ``failed``)."""
    found = []
    for record in sorted((root or paths.state_dir() / "runs").glob("*/run-observability.json")):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # being written: not finished yet
        if data.get("status") == status and data.get("cleanup") == "done":
            found.append(record.parent.name)
    return found
