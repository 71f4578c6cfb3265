"""Test harness: the real guest agent as a subprocess, spoken to through AgentClient.

The agent runs from a copy of exactly the files the guest image carries
(``cleanroom/agent/*.py`` next to an empty ``cleanroom/__init__.py``) with
``python -S``, so a stray import of anything outside the package (or outside
the stdlib) fails these tests just as it would fail in the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cleanroom.agent
from cleanroom.agent.host import AgentClient

AGENT_SRC = Path(cleanroom.agent.__file__).parent
SIGNALS_IGNORED = ["sh", "-c", "trap '' INT QUIT; exec \"$@\"", "sh"]
"""A prefix that starts the agent with SIGINT and SIGQUIT ignored, as a background
job of a non-interactive shell starts (exec keeps ignored signals ignored)."""
DEBIAN_PYTHON = Path("/usr/bin/python3")
"""The guest's interpreter (Debian 12's 3.11, without tarfile.data_filter), where present."""


def make_guest_lib(root: Path) -> Path:
    """Lay out the agent package under ``root`` as the guest image does; returns ``root``."""
    pkg = root / "cleanroom" / "agent"
    pkg.mkdir(parents=True)
    (root / "cleanroom" / "__init__.py").write_text("")
    for src in AGENT_SRC.glob("*.py"):
        shutil.copy2(src, pkg / src.name)
    return root


@dataclass
class Agent:
    """A running agent subprocess and the client connected to it."""

    client: AgentClient
    proc: asyncio.subprocess.Process
    workspace: Path
    reader: asyncio.StreamReader
    """The raw channel (for tests that speak bytes); normally only ``client`` uses it."""
    writer: asyncio.StreamWriter

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        """Close the channel, wait for the agent to exit: (exit status, stderr text)."""
        await self.client.close()
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            err = await self.proc.stderr.read()
            status = await self.proc.wait()
        return status, err.decode(errors="replace")


@dataclass
class AgentFactory:
    guest_lib: Path
    tmp: Path
    started: list[Agent] = field(default_factory=list)

    async def start(
        self,
        *,
        workspace: Path | None = None,
        prefix: list[str] | None = None,
        python: str = sys.executable,
        greet: bool = True,
    ) -> Agent:
        """Start an agent (optionally under ``prefix``, e.g. ``unshare -m``) and greet it."""
        ws = workspace if workspace is not None else self.tmp / f"ws{len(self.started)}"
        parent, child = socket.socketpair()
        cmd = [
            *(prefix or []),
            python,
            "-S",
            "-m",
            "cleanroom.agent.guest",
            "--channel",
            "stdio",
            "--workspace",
            str(ws),
        ]
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=child.fileno(),
                stdout=child.fileno(),
                stderr=asyncio.subprocess.PIPE,
                env={"PYTHONPATH": str(self.guest_lib), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        agent = Agent(AgentClient(reader, writer), proc, ws, reader, writer)
        self.started.append(agent)
        if greet:
            await agent.client.hello(timeout=30)
        return agent

    async def cleanup(self) -> None:
        for agent in self.started:
            with contextlib.suppress(Exception):
                await agent.client.close()
            if agent.proc.returncode is None:
                try:
                    async with asyncio.timeout(10):
                        await agent.proc.wait()
                except TimeoutError:
                    agent.proc.kill()
                    await agent.proc.wait()


@dataclass
class Output:
    """An OutputCallback that keeps everything (for small outputs)."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    events: list[tuple[str, bytes]] = field(default_factory=list)

    async def __call__(self, stream: str, data: bytes) -> None:
        self.events.append((stream, data))
        (self.stdout if stream == "stdout" else self.stderr).extend(data)
