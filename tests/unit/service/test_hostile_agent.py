"""A hostile agent double: whatever a guest's agent sends, the run ends with a stable
code, its record says so, and nothing is left behind (process, fds, files)."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_backend import SRC, AgentProcessBackend, AgentProcessGuest
from no_network import NoNetwork

from cleanroom import paths
from cleanroom.agent import AgentClient
from cleanroom.backends.base import GuestSpec
from cleanroom.config import LimitsConfig, RuntimeConfig
from cleanroom.errors import CleanroomError
from cleanroom.service import LaunchOptions, RunOptions, Service
from cleanroom.service import greet as greet_module
from cleanroom.service.record import RECORD_NAME

SCRIPT = Path(__file__).resolve().parents[2] / "support" / "hostile_agent.py"

LOG_LIMIT = 1 << 20

KEPT = {RECORD_NAME, "stdout.log", "stderr.log", "console.log", "plan.json"}
"""Everything a failed run may leave in its run directory: its record and logs."""


class HostileGuest(AgentProcessGuest):
    """An agent-process guest whose "agent" is ``hostile_agent.py MODE``."""

    def __init__(self, spec: GuestSpec, mode: str) -> None:
        self.spec = spec
        self.workspace = spec.run_dir / "guest-workspace"
        self._parent, child = socket.socketpair()
        self._console = (spec.run_dir / "console.log").open("ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), mode],
                stdin=child.fileno(),
                stdout=child.fileno(),
                stderr=self._console,
                env={"PYTHONPATH": SRC},
            )
        finally:
            child.close()
        (spec.run_dir / "plan.json").write_text('{"agent": "hostile"}\n')
        self.killed = self.destroyed = False
        self.release_gate = None
        self.destroy_error = None


@dataclass
class HostileBackend(AgentProcessBackend):
    mode: str = "hello_malformed"

    async def launch(self, spec: GuestSpec) -> AgentProcessGuest:
        guest = HostileGuest(spec, self.mode)
        self.guests.append(guest)
        return guest


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state directory of this test's own: a service's start repairs and prunes it."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
async def backend() -> AsyncIterator[HostileBackend]:
    be = HostileBackend()
    try:
        yield be
    finally:
        await be.close()


@pytest.fixture
async def service(
    backend: HostileBackend, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    # The host waits this long past a command's timeout for the agent's answer.
    monkeypatch.setattr(greet_module, "AgentClient", functools.partial(AgentClient, exec_grace=0.5))
    limits = LimitsConfig(output_log_bytes=LOG_LIMIT)
    svc = Service(RuntimeConfig(limits=limits), backends={"qemu": backend}, network=NoNetwork())
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


def _fds() -> set[str]:
    return {p.name for p in Path("/proc/self/fd").iterdir()}


CASES = [
    ("hello_malformed", "runtime_launch_failed"),
    ("hello_nested", "runtime_launch_failed"),
    ("hello_oversized", "runtime_launch_failed"),
    ("hello_unknown", "runtime_launch_failed"),
    ("hello_endless", "runtime_launch_failed"),
    ("out_of_order", "guest_agent_failed"),
    ("exit_nested", "guest_agent_failed"),
    ("exit_wrong_keys", "guest_agent_failed"),
    ("output_trickle", "run_timeout"),
    ("output_endless", "output_limit"),
]


@pytest.mark.parametrize(("mode", "code"), CASES)
async def test_hostile_agent_ends_with_stable_code_and_no_leaks(
    service: Service, backend: HostileBackend, tmp_path: Path, mode: str, code: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cleanroom.yaml").write_text("version: 1\n")
    (repo / "file.txt").write_text("data\n")
    backend.mode = mode
    info = await service.launch(
        repo, options=LaunchOptions(run_dir=paths.state_dir() / "test-runs", launch_seconds=2.0)
    )
    fds_before = _fds()
    with pytest.raises(CleanroomError) as caught:
        await service.run(info.cleanroom_id, ["true"], RunOptions(timeout=1.0))
    assert caught.value.code == code, caught.value
    (guest,) = backend.guests
    assert guest.destroyed
    assert guest.proc.poll() is not None  # killed and reaped
    (run_dir,) = [
        p for p in (paths.state_dir() / "test-runs").iterdir() if p.name.startswith("run-")
    ]
    assert {p.name for p in run_dir.iterdir()} <= KEPT
    record = json.loads((run_dir / RECORD_NAME).read_text())
    assert record["error"]["code"] == code
    assert record["status"] == ("timeout" if code == "run_timeout" else "error")
    assert record["cleanup"] == "done"
    assert (run_dir / "stdout.log").stat().st_size <= LOG_LIMIT
    assert _fds() <= fds_before  # the channel, console and pipes are all closed
