"""A backend whose "guests" are the real guest agent running as a host process.

For unit tests of the service layer (runner, pool, finalizers) without a VMM:
each guest is ``python -m cleanroom.agent.guest --channel stdio`` on one end of
a socketpair, with its own workspace directory, so the host side speaks the
real agent protocol to a real agent. It isolates nothing; the VM tests cover
that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cleanroom
from cleanroom.backends.base import Capabilities, GuestFacts, GuestSpec, Isolation
from cleanroom.doctor import DoctorCheck
from cleanroom.errors import RuntimeLaunchFailed

SRC = str(Path(cleanroom.__file__).resolve().parent.parent)


class AgentProcessGuest:
    """One agent process; ``kill``/``destroy`` end it by PID."""

    def __init__(self, spec: GuestSpec) -> None:
        self.spec = spec
        self.workspace = spec.run_dir / "guest-workspace"
        self._parent, child = socket.socketpair()
        self._console = (spec.run_dir / "console.log").open("ab")
        try:
            self.proc = subprocess.Popen(
                [
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
        return "qemu-tcg"

    @property
    def plan_path(self) -> Path:
        return self.spec.run_dir / "plan.json"

    @property
    def console_path(self) -> Path:
        return self.spec.run_dir / "console.log"

    @property
    def facts(self) -> GuestFacts:
        return GuestFacts(rootfs_method="none", workspace_seeded=False)

    @property
    def timings(self) -> Mapping[str, Any]:
        return {"rootfs_method": "none"}

    async def open_channel(
        self, deadline: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(sock=self._parent)

    def console_tail(self, lines: int = 20) -> list[str]:
        return []

    def exited(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        self.killed = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    async def destroy(self) -> None:
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
    """Launches :class:`AgentProcessGuest` guests and keeps every one it made."""

    name: str = "qemu"
    guests: list[AgentProcessGuest] = field(default_factory=list)
    fail_launch: bool = False
    release_gate: asyncio.Event | None = None
    """Given to every guest launched from now on (see ``AgentProcessGuest``)."""
    destroy_error: Exception | None = None

    async def prepare(self) -> Capabilities:
        return Capabilities("qemu", "test", "qemu-tcg", False, False, False, True, True)

    async def launch(self, spec: GuestSpec) -> AgentProcessGuest:
        if self.fail_launch:
            raise RuntimeLaunchFailed("launch refused by the test")
        guest = AgentProcessGuest(spec)
        guest.release_gate, guest.destroy_error = self.release_gate, self.destroy_error
        self.guests.append(guest)
        return guest

    async def doctor(self) -> list[DoctorCheck]:
        return []

    async def close(self) -> None:
        for guest in self.guests:
            guest.release_gate = guest.destroy_error = None
            if not guest.destroyed:
                await guest.destroy()
