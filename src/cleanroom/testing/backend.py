"""A backend whose "guests" are the real guest agent running as a host process.

For tests of everything above the backends (service, server, clients, CLI)
without a VMM: each guest is ``python -m cleanroom.agent.guest --channel
stdio`` on one end of a socketpair, with its own workspace directory, so the
host side speaks the real agent protocol to a real agent. It isolates
nothing: commands run on the host as the test's user. Never serve it to
anything but tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cleanroom
from cleanroom.backends.base import Capabilities, GuestFacts, GuestSpec, Isolation
from cleanroom.doctor import DoctorCheck
from cleanroom.errors import BackendUnavailable, RuntimeLaunchFailed

__all__ = [
    "AgentProcessBackend",
    "AgentProcessGuest",
    "UnavailableBackend",
    "can_use_private_mounts",
]

SRC = str(Path(cleanroom.__file__).resolve().parent.parent)
"""The directory holding the ``cleanroom`` package (the agent processes import it from there)."""
_UNSHARE = ("unshare", "--mount", "--propagation", "private")
"""``unshare`` execs the agent (same PID) in a private mount namespace."""


@functools.cache
def can_use_private_mounts() -> bool:
    """Whether agents can run in their own mount namespace here (root, and unshare(1)
    works: a container may forbid it), where they enforce a read-only workspace
    with a bind mount as in a VM. Probed once per process."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


class AgentProcessGuest:
    """One agent process; ``kill``/``destroy`` end it by PID."""

    def __init__(self, spec: GuestSpec, *, private_mounts: bool = False) -> None:
        self.spec = spec
        self.workspace = spec.run_dir / "guest-workspace"
        self._parent, child = socket.socketpair()
        self._console = (spec.run_dir / "console.log").open("ab")
        try:
            self.proc = subprocess.Popen(
                [
                    *(_UNSHARE if private_mounts else ()),
                    *(sys.executable, "-m", "cleanroom.agent.guest", "--channel", "stdio"),
                    *("--workspace", str(self.workspace)),
                ],
                stdin=child.fileno(),
                stdout=child.fileno(),
                stderr=self._console,
                env={"PYTHONPATH": SRC, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        finally:
            child.close()
        (spec.run_dir / "plan.json").write_text('{"agent": "process"}\n')
        self.killed = False
        self.destroyed = False
        self.release_gate: asyncio.Event | None = None
        """When set, ``destroy`` waits for this event (to hold a run's release)."""
        self.destroy_error: Exception | None = None

    @property
    def isolation(self) -> Isolation:
        """Claims the weakest VM isolation so the service treats it as a VM guest."""
        return "qemu-tcg"

    @property
    def plan_path(self) -> Path:
        """A one-line plan (there is no VMM to describe)."""
        return self.spec.run_dir / "plan.json"

    @property
    def console_path(self) -> Path:
        """The agent's stderr."""
        return self.spec.run_dir / "console.log"

    @property
    def facts(self) -> GuestFacts:
        """No rootfs is prepared; the workspace is always streamed."""
        return GuestFacts(rootfs_method="none", workspace_seeded=False)

    @property
    def timings(self) -> Mapping[str, float]:
        """No rootfs is prepared, no VMM started."""
        return {}

    async def open_channel(
        self, deadline: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The host end of the socketpair (the agent is already running)."""
        return await asyncio.open_unix_connection(sock=self._parent)

    def console_tail(self, lines: int = 20) -> list[str]:
        """Nothing: the agent's stderr is in ``console_path``."""
        return []

    def exited(self) -> int | None:
        """The agent process's exit status, or None while it runs."""
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL the agent process (by PID)."""
        self.killed = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    async def destroy(self) -> None:
        """Kill and reap the agent; raises ``destroy_error`` if one was set."""
        self.kill()
        if self.release_gate is not None:
            await self.release_gate.wait()
        await asyncio.to_thread(self.proc.wait)
        self._console.close()
        self.destroyed = True
        if self.destroy_error is not None:
            raise self.destroy_error


@dataclass
class AgentProcessBackend:
    """Launches :class:`AgentProcessGuest` guests and keeps every one it made.

    Give it to ``Service(backends={"qemu": AgentProcessBackend()})`` (the name
    it is registered under is the backend name clients see).
    """

    name: str = "qemu"
    guests: list[AgentProcessGuest] = field(default_factory=list)
    private_mounts: bool = field(default_factory=can_use_private_mounts)
    """Run each agent in its own mount namespace (default: when this host allows it);
    without one, a read-only workspace fails with ``guest_agent_failed``."""
    fail_launch: bool = False
    release_gate: asyncio.Event | None = None
    """Given to every guest launched from now on (see ``AgentProcessGuest``)."""
    destroy_error: Exception | None = None

    async def prepare(self) -> Capabilities:
        """No egress enforcement: policies with allow rules are refused at launch."""
        return Capabilities(
            backend_name=self.name,
            backend_version="test",
            isolation="qemu-tcg",
            network_default_deny=False,
            network_host_port_filtering=False,
            dns_control=False,
            policy_immutability=True,
            audit_event_emission=True,
        )

    async def launch(self, spec: GuestSpec) -> AgentProcessGuest:
        """Start an agent process for ``spec`` (``RuntimeLaunchFailed`` with ``fail_launch``)."""
        if self.fail_launch:
            raise RuntimeLaunchFailed("launch refused by the test")
        guest = AgentProcessGuest(spec, private_mounts=self.private_mounts)
        guest.release_gate, guest.destroy_error = self.release_gate, self.destroy_error
        self.guests.append(guest)
        return guest

    async def doctor(self) -> list[DoctorCheck]:
        """One passing check that says what this backend is."""
        reason = "guests are agent processes on the host (test backend, no isolation)"
        return [DoctorCheck(f"backend.{self.name}", "pass", reason)]

    async def close(self) -> None:
        """Destroy every guest not destroyed yet."""
        for guest in self.guests:
            guest.release_gate = guest.destroy_error = None
            if not guest.destroyed:
                await guest.destroy()


@dataclass
class UnavailableBackend:
    """A backend that is never usable here (``BackendUnavailable`` from every call),
    so tests do not depend on which VMMs the host happens to have."""

    name: str

    def _unavailable(self) -> BackendUnavailable:
        return BackendUnavailable(
            f"backend {self.name!r} is not available (test host)", details={"backend": self.name}
        )

    async def prepare(self) -> Capabilities:
        """Always raises ``BackendUnavailable``."""
        raise self._unavailable()

    async def launch(self, spec: GuestSpec) -> AgentProcessGuest:
        """Always raises ``BackendUnavailable``."""
        raise self._unavailable()

    async def doctor(self) -> list[DoctorCheck]:
        """Always raises ``BackendUnavailable`` (the service reports it as a check)."""
        raise self._unavailable()

    async def close(self) -> None:
        """Nothing to release."""
