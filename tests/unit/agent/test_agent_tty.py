"""Commands on a pseudo-terminal through the real guest agent: size, SIGWINCH, Ctrl-C, exit."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_harness import SIGNALS_IGNORED, Agent, AgentFactory, Output
from procs import dead

from cleanroom.agent import ExitStatus
from cleanroom.agent.messages import ExecRequest, parse_exec, parse_resize
from cleanroom.agent.protocol import HEADER_SIZE


class Keyboard:
    """Stdin typed into the terminal on demand (an async iterator the exec reads)."""

    def __init__(self) -> None:
        self._q: asyncio.Queue[bytes | None] = asyncio.Queue()

    def type(self, data: bytes) -> None:
        self._q.put_nowait(data)

    def close(self) -> None:
        self._q.put_nowait(None)

    async def stream(self) -> AsyncIterator[bytes]:
        while (data := await self._q.get()) is not None:
            yield data


class Screen(Output):
    """Output that can be waited on for a marker."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    async def __call__(self, stream: str, data: bytes) -> None:
        await super().__call__(stream, data)
        self.changed.set()

    async def wait_for(self, marker: bytes, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while marker not in self.stdout:
                self.changed.clear()
                await self.changed.wait()


def _start(
    agent: Agent, argv: list[str], screen: Screen, keyboard: Keyboard | None = None, **kw: object
) -> asyncio.Task[ExitStatus]:
    stdin = None if keyboard is None else keyboard.stream()
    return asyncio.create_task(
        agent.client.exec(argv, cwd="/", tty=(24, 80), stdin=stdin, on_output=screen, **kw)  # type: ignore[arg-type]
    )


async def test_stty_size_reports_the_requested_size(agent: Agent) -> None:
    screen = Screen()
    status = await agent.client.exec(["stty", "size"], cwd="/", tty=(33, 121), on_output=screen)
    assert status.exit_code == 0
    assert bytes(screen.stdout) == b"33 121\r\n"  # the terminal's ONLCR, as on any tty
    assert screen.stderr == b""


async def test_the_command_sees_a_controlling_terminal_in_the_foreground(agent: Agent) -> None:
    screen = Screen()
    # tty names the device; ps-free check that our group is the terminal's foreground group.
    script = (
        "import os\n"
        "print(os.isatty(0), os.isatty(1), os.isatty(2))\n"
        "print(os.tcgetpgrp(0) == os.getpgrp() == os.getsid(0) == os.getpid())\n"
        "fd = os.open('/dev/tty', os.O_RDWR); os.close(fd); print('ctty ok')\n"
    )
    argv = ["python3", "-c", script]
    status = await agent.client.exec(argv, cwd="/", tty=(5, 5), on_output=screen)
    assert status.exit_code == 0
    assert bytes(screen.stdout).split(b"\r\n")[:3] == [b"True True True", b"True", b"ctty ok"]


async def test_stderr_goes_to_the_terminal(agent: Agent) -> None:
    screen = Screen()
    status = await agent.client.exec(
        ["sh", "-c", "echo out; echo err >&2; exit 3"], cwd="/", tty=(24, 80), on_output=screen
    )
    assert status.exit_code == 3
    assert bytes(screen.stdout) == b"out\r\nerr\r\n"
    assert screen.stderr == b""


async def test_typing_reaches_the_command_and_eof_ends_it(agent: Agent) -> None:
    screen, keys = Screen(), Keyboard()
    script = "stty -echo; echo ready; read line; echo got:$line; cat"
    task = _start(agent, ["sh", "-c", script], screen, keys)
    await screen.wait_for(b"ready")
    keys.type(b"hello there\n")
    await screen.wait_for(b"got:hello there")
    keys.type(b"to cat\n")
    await screen.wait_for(b"to cat\r\n")
    keys.close()  # EOF: the terminal's ^D ends cat
    status = await asyncio.wait_for(task, 30)
    assert status.exit_code == 0


async def test_resize_delivers_sigwinch_and_the_new_size(agent: Agent) -> None:
    screen, keys = Screen(), Keyboard()
    script = "trap 'echo WINCH; stty size' WINCH; echo ready; while :; do sleep 0.05; done"
    task = _start(agent, ["sh", "-c", script], screen, keys)
    await screen.wait_for(b"ready")
    await agent.client.resize(50, 132)
    await screen.wait_for(b"WINCH\r\n50 132\r\n")
    await agent.client.signal(signal.SIGKILL)
    status = await asyncio.wait_for(task, 30)
    assert status.signal == signal.SIGKILL


@pytest.fixture(params=["inherited", "ignored"])
async def sigint_agent(request: pytest.FixtureRequest, agents: AgentFactory) -> Agent:
    """An agent started as usual, or with SIGINT ignored (its commands must not be)."""
    return await agents.start(prefix=SIGNALS_IGNORED if request.param == "ignored" else None)


async def test_sigint_reaches_the_foreground_group(sigint_agent: Agent) -> None:
    agent = sigint_agent
    screen, keys = Screen(), Keyboard()
    # An interactive shell with job control runs sleep in its own foreground group;
    # Ctrl-C must stop the sleep (its group), not the shell (which ignores SIGINT).
    task = _start(agent, ["sh", "-i"], screen, keys, env={"PS1": "$ "})
    # Quotes keep the terminal's echo of the typed line from matching the output.
    keys.type(b"echo sh''ell=$$ o''k\n")
    await screen.wait_for(b" ok\r\n")
    shell = int(bytes(screen.stdout).split(b"shell=")[1].split()[0])
    keys.type(b"echo sle''eping; sleep 300\n")
    await screen.wait_for(b"sleeping\r\n")
    await _foreground_child(shell, "sleep")  # the shell made sleep the terminal's group
    await agent.client.signal(signal.SIGINT)
    await screen.wait_for(b"sleeping\r\n\r\n$ ")  # the shell survived and prompts again
    keys.type(b"echo sta''tus:$?\n")
    await screen.wait_for(b"status:130\r\n")
    keys.type(b"exit 5\n")
    status = await asyncio.wait_for(task, 30)
    assert status.exit_code == 5


async def _foreground_child(parent: int, name: str, timeout: float = 30) -> int:
    """The PID of ``parent``'s child ``name`` once it leads its own process group and
    that group is its terminal's foreground group (a poll with a deadline)."""
    async with asyncio.timeout(timeout):
        while True:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat.rsplit(")", 1)[1].split()
                ppid, pgrp, tpgid = int(fields[1]), int(fields[2]), int(fields[5])
                if comm == name and ppid == parent and pgrp == int(entry.name) == tpgid:
                    return pgrp
            await asyncio.sleep(0.01)


async def test_sigint_on_a_plain_command(sigint_agent: Agent) -> None:
    agent = sigint_agent
    screen = Screen()
    task = _start(agent, ["sh", "-c", "echo ready; exec sleep 300"], screen)
    await screen.wait_for(b"ready")
    await agent.client.signal(signal.SIGINT)
    status = await asyncio.wait_for(task, 30)
    assert status.signal == signal.SIGINT
    assert status.exit_code == 128 + signal.SIGINT


async def test_missing_program_on_a_terminal(agent: Agent) -> None:
    screen = Screen()
    status = await agent.client.exec(["/nonexistent/x"], cwd="/", tty=(24, 80), on_output=screen)
    assert status.exit_code == 127
    assert b"/nonexistent/x" in screen.stdout


async def test_tty_and_plain_execs_share_a_session(agent: Agent) -> None:
    for tty in [(24, 80), None, (10, 10)]:
        out = Output()
        status = await agent.client.exec(["sh", "-c", "test -t 1"], cwd="/", tty=tty, on_output=out)
        assert status.exit_code == (0 if tty else 1)


async def test_resize_without_a_terminal_is_ignored(agent: Agent) -> None:
    await agent.client.resize(10, 10)  # nothing runs
    out, keys = Screen(), Keyboard()
    task = asyncio.create_task(
        agent.client.exec(
            ["sh", "-c", "echo ready; read line; echo done"],
            cwd="/",
            stdin=keys.stream(),
            on_output=out,
        )
    )
    await out.wait_for(b"ready\n")
    await agent.client.resize(10, 10)  # while the command waits for its input
    keys.type(b"go\n")
    keys.close()
    status = await asyncio.wait_for(task, 30)
    assert (status.exit_code, bytes(out.stdout)) == (0, b"ready\ndone\n")


@pytest.mark.parametrize("size", [(0, 80), (24, 0), (65536, 1), (-1, 5)])
async def test_bad_window_sizes_fail_locally(agent: Agent, size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="invalid"):
        await agent.client.resize(*size)
    with pytest.raises(ValueError, match="invalid"):
        await agent.client.exec(["true"], cwd="/", tty=size, on_output=Output())
    # The session is intact.
    assert (await agent.client.exec(["true"], cwd="/", on_output=Output())).exit_code == 0


def test_exec_tty_round_trip_and_strictness() -> None:
    frame = ExecRequest(("sh",), tty=(3, 4)).to_frame()
    assert parse_exec(frame[HEADER_SIZE:]).tty == (3, 4)
    assert parse_exec(ExecRequest(("sh",)).to_frame()[HEADER_SIZE:]).tty is None
    bad = frame[HEADER_SIZE:].replace(b'"cols":4', b'"cols":4,"x":1')
    with pytest.raises(Exception, match="keys"):
        parse_exec(bad)
    with pytest.raises(Exception, match="keys"):
        parse_resize(b'{"rows":1}')
    with pytest.raises(Exception, match="must be int"):
        parse_resize(b'{"rows":true,"cols":2}')


async def test_background_jobs_in_other_groups_die_with_the_session(agent: Agent) -> None:
    screen, keys = Screen(), Keyboard()
    task = _start(agent, ["sh", "-i"], screen, keys, env={"PS1": "$ "})
    # With job control the background job gets a process group of its own.
    keys.type(b"sleep 300 & echo b''g=$! d''one\n")
    await screen.wait_for(b" done\r\n")
    text = bytes(screen.stdout).decode()
    bg = int(text.split("bg=")[1].split()[0])
    keys.type(b"exit 0\n")
    status = await asyncio.wait_for(task, 30)
    assert status.exit_code == 0
    for _ in range(100):
        if dead(bg):
            break
        await asyncio.sleep(0.05)
    assert dead(bg)


async def test_timeout_on_a_terminal(agent: Agent) -> None:
    screen = Screen()
    status = await agent.client.exec(
        ["sh", "-c", "echo ready; exec sleep 300"], cwd="/", tty=(24, 80), timeout=0.5,
        on_output=screen,
    )  # fmt: skip
    assert status.timed_out
    assert status.signal == signal.SIGTERM
    assert bytes(screen.stdout) == b"ready\r\n"
