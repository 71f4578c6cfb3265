"""The service's network seam: bound leases and slots release through the provider
that made them, and a run releases its lease on every exit path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_backend import AgentProcessBackend

from cleanroom.backends.base import NetworkAttachment
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.netspec import GuestInterface
from cleanroom.policy import CompiledPolicy, load_policy
from cleanroom.service.network import bind_network
from cleanroom.service.record import RECORD_NAME, JsonValue, RunRecorder, read_record
from cleanroom.service.run import NetworkHold, RunPlan, execute_run

ATTACHMENT = NetworkAttachment(netns="crn-test", tap="tap0", mac="02:00:00:00:00:01")
GUEST_NET = GuestInterface("10.0.0.2", 30, "10.0.0.1", "10.0.0.1")


@dataclass(frozen=True)
class FakeSlot:
    owner_id: str
    attachment: NetworkAttachment = ATTACHMENT


@dataclass(frozen=True)
class FakeLease:
    run_id: str
    attachment: NetworkAttachment = ATTACHMENT
    guest: GuestInterface = GUEST_NET

    @property
    def timings(self) -> Mapping[str, float]:
        return {"policy_resolution_ms": 1.25, "network_setup_ms": 3.0}


@dataclass(frozen=True)
class FakeSummary:
    of: str

    def to_dict(self) -> dict[str, JsonValue]:
        return {"mode": "filtered", "allowed": 1, "blocked": 2, "of": self.of}


@dataclass
class FakeLayer:
    """Records every call; conforms to ``NetworkLayer[FakeLease, FakeSlot]``."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    async def setup(self, run_id: str, policy: CompiledPolicy, run_dir: Path) -> FakeLease:
        self.calls.append(("setup", run_id))
        return FakeLease(run_id)

    async def reserve(self, owner_id: str) -> FakeSlot:
        self.calls.append(("reserve", owner_id))
        return FakeSlot(owner_id)

    async def activate(
        self, slot: FakeSlot, run_id: str, policy: CompiledPolicy, run_dir: Path
    ) -> FakeLease:
        self.calls.append(("activate", f"{slot.owner_id}->{run_id}"))
        return FakeLease(run_id)

    async def teardown(self, target: FakeLease | FakeSlot) -> FakeSummary:
        name = target.run_id if isinstance(target, FakeLease) else target.owner_id
        self.calls.append(("teardown", name))
        return FakeSummary(name)

    async def reconcile(self) -> list[str]:
        self.calls.append(("reconcile", ""))
        return ["crn-old"]


@pytest.fixture
def policy(tmp_path: Path) -> CompiledPolicy:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cleanroom.yaml").write_text(
        "version: 1\nsandbox:\n  network:\n    allow:\n      - host: example.test\n"
    )
    return load_policy(repo)


def _recorder(run_dir: Path) -> RunRecorder:
    return RunRecorder(
        run_id="run-1",
        cleanroom_id="cr-1",
        backend="qemu",
        policy_hash="h",
        command=[],
        run_dir=run_dir,
    )


async def test_bound_handles_release_through_their_provider(
    policy: CompiledPolicy, tmp_path: Path
) -> None:
    layer = FakeLayer()
    networks = bind_network(layer)
    assert await networks.reconcile() == ["crn-old"]
    lease = await networks.setup("run-a", policy, tmp_path)
    assert (lease.attachment, lease.policy_resolution_ms) == (ATTACHMENT, 1.25)
    slot = await networks.reserve("pool-b")
    activated = await slot.activate("run-c", policy, tmp_path)
    assert (await lease.release()).to_dict()["of"] == "run-a"
    assert (await activated.release()).to_dict()["of"] == "run-c"
    assert (await slot.release()).to_dict()["of"] == "pool-b"
    assert layer.calls == [
        ("reconcile", ""),
        ("setup", "run-a"),
        ("reserve", "pool-b"),
        ("activate", "pool-b->run-c"),
        ("teardown", "run-a"),
        ("teardown", "run-c"),
        ("teardown", "pool-b"),
    ]


async def test_hold_releases_an_unused_slot_silently_and_a_lease_into_the_record(
    policy: CompiledPolicy, tmp_path: Path
) -> None:
    layer = FakeLayer()
    networks = bind_network(layer)
    rec = _recorder(tmp_path)
    idle = NetworkHold(rec, await networks.reserve("pool-idle"))
    await idle.release()
    await idle.release()  # once only
    assert rec.snapshot()["network"] is None
    used_slot = await networks.reserve("pool-used")
    used = NetworkHold(rec, used_slot)
    used.leased(await used_slot.activate("run-1", policy, tmp_path))
    await used.release()
    await used.release()
    data = rec.snapshot()
    assert data["network"] == {"mode": "filtered", "allowed": 1, "blocked": 2, "of": "run-1"}
    assert isinstance(data["network_cleanup_ms"], float)
    # The activated slot is released as the run's lease, not again as a slot.
    assert [c for c in layer.calls if c[0] == "teardown"] == [
        ("teardown", "pool-idle"),
        ("teardown", "run-1"),
    ]


async def test_failed_launch_releases_the_runs_network(
    policy: CompiledPolicy, tmp_path: Path
) -> None:
    layer = FakeLayer()
    backend = AgentProcessBackend(fail_launch=True)
    run_dir = tmp_path / "runs" / "run-1"
    plan = RunPlan(
        run_id="run-1",
        cleanroom_id="cr-1",
        backend_name="qemu",
        command=("true",),
        cwd=tmp_path / "repo",
        run_dir=run_dir,
        policy=policy,
        read_only_workspace=False,
        launch_seconds=10,
    )
    with pytest.raises(RuntimeLaunchFailed):
        await execute_run(plan, backend, bind_network(layer), None)
    assert layer.calls == [("setup", "run-1"), ("teardown", "run-1")]
    record = read_record(run_dir)
    assert (record["status"], record["cleanup"]) == ("error", "done")
    assert record["error"] == {
        "code": "runtime_launch_failed",
        "message": "launch refused by the test",
    }
    assert record["network"] == {"mode": "filtered", "allowed": 1, "blocked": 2, "of": "run-1"}
    assert record["policy_resolution_ms"] == 1.2
    assert not list(run_dir.glob("workspace-seed*"))
    assert (run_dir / RECORD_NAME).exists()
