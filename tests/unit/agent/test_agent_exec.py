"""Commands through the real guest agent subprocess: results, streams, signals, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_harness import SIGNALS_IGNORED, Agent, AgentFactory, Output

from cleanroom.agent import AgentDisconnected, ExitStatus, GuestInfo
from cleanroom.agent.protocol import AGENT_VERSION, PROTOCOL_VERSION


def _pid_alive(pid: int) -> bool:
    try:
        with Path(f"/proc/{pid}/stat").open() as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _hwm_kib(pid: int | str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _reset_hwm() -> int:
    """Reset this process's VmHWM to its current RSS; returns that RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _hwm_kib("self")


async def test_hello_reports_versions(agents: AgentFactory) -> None:
    agent = await agents.start(greet=False)
    info = await agent.client.hello(timeout=30)
    assert isinstance(info, GuestInfo)
    assert info.agent_version == AGENT_VERSION
    assert info.protocol_version == PROTOCOL_VERSION
    assert info.kernel == os.uname().release
    assert info.python.startswith("3.")


async def test_echo(agent: Agent) -> None:
    out = Output()
    status = await agent.client.exec(["echo", "hello world"], cwd="/", on_output=out)
    assert status.exit_code == 0
    assert status.signal is None
    assert not status.timed_out
    assert bytes(out.stdout) == b"hello world\n"
    assert out.stderr == b""


@pytest.mark.parametrize("code", [0, 1, 7])
async def test_exit_codes(agent: Agent, code: int) -> None:
    status = await agent.client.exec(["sh", "-c", f"exit {code}"], cwd="/", on_output=Output())
    assert status.exit_code == code
    assert status.signal is None


async def test_sequential_execs_in_one_session(agent: Agent) -> None:
    for i in range(3):
        out = Output()
        status = await agent.client.exec(["echo", str(i)], cwd="/", on_output=out)
        assert (status.exit_code, bytes(out.stdout)) == (0, f"{i}\n".encode())


async def test_death_by_signal(agent: Agent) -> None:
    status = await agent.client.exec(["sh", "-c", "kill -SEGV $$"], cwd="/", on_output=Output())
    assert status.exit_code == 128 + signal.SIGSEGV
    assert status.signal == signal.SIGSEGV
    assert status.signal_name == "SIGSEGV"
    assert not status.timed_out


async def test_env_cwd_and_defaults(agent: Agent, tmp_path: Path) -> None:
    out = Output()
    status = await agent.client.exec(
        ["sh", "-c", 'echo "$FOO|$HOME|$LANG|$PATH"; pwd'],
        env={"FOO": "bar"},
        cwd=str(tmp_path),
        on_output=out,
    )
    assert status.exit_code == 0
    line1, line2 = bytes(out.stdout).decode().splitlines()
    assert line1 == "bar|/root|C.UTF-8|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert line2 == str(tmp_path)


async def test_missing_program_is_127_with_message(agent: Agent) -> None:
    out = Output()
    status = await agent.client.exec(["/nonexistent/prog"], cwd="/", on_output=out)
    assert status.exit_code == 127
    assert b"/nonexistent/prog" in out.stderr


async def test_stdout_stderr_separate_and_ordered(agent: Agent) -> None:
    script = "for i in $(seq 1 300); do echo out$i; echo err$i >&2; done"
    out = Output()
    status = await agent.client.exec(["sh", "-c", script], cwd="/", on_output=out)
    assert status.exit_code == 0
    assert bytes(out.stdout).decode().split() == [f"out{i}" for i in range(1, 301)]
    assert bytes(out.stderr).decode().split() == [f"err{i}" for i in range(1, 301)]


async def test_binary_output_all_byte_values(agent: Agent) -> None:
    out = Output()
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 3)"
    status = await agent.client.exec(["python3", "-c", script], cwd="/", on_output=out)
    assert status.exit_code == 0
    assert bytes(out.stdout) == bytes(range(256)) * 3


async def test_stdin_bytes(agent: Agent) -> None:
    payload = bytes(range(256)) * 1000  # several frames
    out = Output()
    status = await agent.client.exec(["cat"], cwd="/", stdin=payload, on_output=out)
    assert status.exit_code == 0
    assert bytes(out.stdout) == payload


async def test_stdin_async_iterator(agent: Agent) -> None:
    async def source() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"line {i}\n".encode()

    out = Output()
    status = await agent.client.exec(["wc", "-l"], cwd="/", stdin=source(), on_output=out)
    assert status.exit_code == 0
    assert bytes(out.stdout).strip() == b"5"


async def test_stdin_larger_than_the_command_reads(agent: Agent) -> None:
    # The command stops reading early: the guest must drop the rest, not deadlock.
    payload = os.urandom(1 << 20) * 8
    out = Output()
    status = await agent.client.exec(["head", "-c", "10"], cwd="/", stdin=payload, on_output=out)
    assert status.exit_code == 0
    assert bytes(out.stdout) == payload[:10]
    status = await agent.client.exec(["sleep", "0.2"], cwd="/", stdin=payload, on_output=out)
    assert status.exit_code == 0
    status = await agent.client.exec(["echo", "next"], cwd="/", on_output=out)
    assert status.exit_code == 0


async def test_no_stdin_reads_eof(agent: Agent) -> None:
    out = Output()
    status = await agent.client.exec(["cat"], cwd="/", on_output=out)
    assert status.exit_code == 0
    assert out.stdout == b""


async def test_timeout_kills_whole_process_group(agent: Agent, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The grandchild ignores nothing and sleeps long; the shell waits for it.
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    status = await agent.client.exec(["sh", "-c", script], cwd="/", timeout=1, on_output=Output())
    assert status.timed_out
    assert status.signal == signal.SIGTERM
    assert status.exit_code == 128 + signal.SIGTERM
    grandchild = int(pidfile.read_text())
    for _ in range(100):
        if not _pid_alive(grandchild):
            break
        await asyncio.sleep(0.05)
    assert not _pid_alive(grandchild)


async def test_timeout_escalates_to_sigkill(agent: Agent) -> None:
    script = "trap '' TERM; while :; do sleep 0.1; done"
    status = await agent.client.exec(["sh", "-c", script], cwd="/", timeout=0.5, on_output=Output())
    assert status.timed_out
    assert status.signal == signal.SIGKILL
    assert status.signal_name == "SIGKILL"


async def _exec_until_ready(agent: Agent, script: str, out: Output) -> asyncio.Task[ExitStatus]:
    """Start ``script``; return its exec task once it printed ``ready``."""
    ready = asyncio.Event()

    async def on_output(stream: str, data: bytes) -> None:
        await out(stream, data)
        if b"ready" in out.stdout:
            ready.set()

    run = agent.client.exec(["sh", "-c", script], cwd="/", on_output=on_output)
    task = asyncio.create_task(run)
    await asyncio.wait_for(ready.wait(), 30)
    return task


async def test_signal_terminates_the_command(agent: Agent) -> None:
    task = await _exec_until_ready(agent, "echo ready; exec sleep 300", Output())
    await agent.client.signal(signal.SIGTERM)
    status = await asyncio.wait_for(task, 30)
    assert (status.exit_code, status.signal, status.signal_name) == (143, 15, "SIGTERM")
    assert not status.timed_out


def _ignored_and_blocked(status_text: str) -> tuple[int, int]:
    fields = dict(line.split(":\t", 1) for line in status_text.splitlines() if ":\t" in line)
    return int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)


@pytest.mark.parametrize("tty", [None, (24, 80)])
async def test_commands_start_with_default_signal_dispositions(
    agents: AgentFactory, tty: tuple[int, int] | None
) -> None:
    agent = await agents.start(prefix=SIGNALS_IGNORED)
    ignored, _ = _ignored_and_blocked(Path(f"/proc/{agent.pid}/status").read_text())
    assert ignored & (1 << (signal.SIGINT - 1))  # the agent itself ignores SIGINT
    out = Output()
    status = await agent.client.exec(["cat", "/proc/self/status"], cwd="/", tty=tty, on_output=out)
    assert status.exit_code == 0
    assert _ignored_and_blocked(out.stdout.decode()) == (0, 0)


async def test_signal_reaches_the_whole_process_group(agent: Agent, tmp_path: Path) -> None:
    marker = tmp_path / "got"
    # "ready" comes from the child once its own trap is set (a signal earlier could
    # still find the leader's trap inherited across the fork).
    script = f"""
trap 'echo leader >> {marker}' USR1
( trap 'echo child >> {marker}; exit 3' USR1; echo ready; while :; do sleep 0.05; done ) &
wait $!; wait $!; echo "child rc=$?"
"""
    out = Output()
    task = await _exec_until_ready(agent, script, out)
    await agent.client.signal(signal.SIGUSR1)
    status = await asyncio.wait_for(task, 30)
    assert status.exit_code == 0, bytes(out.stderr)
    assert b"child rc=3" in out.stdout
    assert sorted(marker.read_text().split()) == ["child", "leader"]


async def test_background_job_does_not_hold_the_exit(agent: Agent, tmp_path: Path) -> None:
    out = Output()
    pidfile = tmp_path / "job.pid"
    status = await agent.client.exec(
        ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; echo started"],
        cwd="/",
        timeout=60,
        on_output=out,
    )
    job = int(pidfile.read_text())
    try:
        assert status.exit_code == 0
        assert not status.timed_out
        assert bytes(out.stdout) == b"started\n"
    finally:
        # A guest would be destroyed with the job in it; this agent is a host process.
        with contextlib.suppress(ProcessLookupError):
            os.kill(job, signal.SIGKILL)


async def test_200_mb_output_bounded_memory(agent: Agent) -> None:
    total = 200 * 1000 * 1000
    counts = {"stdout": 0, "stderr": 0}

    async def count(stream: str, data: bytes) -> None:
        counts[stream] += len(data)

    baseline_mib = _reset_hwm() / 1024
    status = await agent.client.exec(
        ["sh", "-c", f"head -c {total} /dev/zero; echo done >&2"], cwd="/", on_output=count
    )
    assert status.exit_code == 0
    assert counts == {"stdout": total, "stderr": 5}
    agent_hwm_mib = _hwm_kib(agent.pid) / 1024
    own_hwm_mib = _hwm_kib("self") / 1024
    print(f"peak RSS: agent {agent_hwm_mib:.1f} MiB, host test process {own_hwm_mib:.1f} MiB")
    assert agent_hwm_mib < 100
    assert own_hwm_mib - baseline_mib < 50


async def test_agent_death_mid_exec_raises_disconnected(agent: Agent) -> None:
    out = Output()
    ready = asyncio.Event()

    async def on_output(stream: str, data: bytes) -> None:
        await out(stream, data)
        if out.stdout.endswith(b"\n"):
            ready.set()

    task = asyncio.create_task(
        agent.client.exec(["sh", "-c", "echo $$; exec sleep 300"], cwd="/", on_output=on_output)
    )
    await asyncio.wait_for(ready.wait(), 30)
    pgid = int(out.stdout)
    try:
        agent.proc.kill()
        with pytest.raises(AgentDisconnected):
            await asyncio.wait_for(task, 30)
    finally:
        # The killed agent cannot clean up its command: end it here, by its group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


_CHILD_SETUP_PROBE = """
import signal, sys
from cleanroom.agent.process import child_setup
if sys.argv[1] == "ignored":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
else:
    for s in signal.valid_signals():
        if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE, signal.SIGXFSZ):
            try:
                signal.signal(s, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
print(child_setup() is None, child_setup(lambda: None) is None)
"""


@pytest.mark.parametrize(
    ("state", "expected"), [("clean", "True False"), ("ignored", "False False")]
)
def test_a_command_gets_a_preexec_fn_only_when_something_needs_resetting(
    state: str, expected: str
) -> None:
    """With default signal dispositions (a guest's agent) the command starts without a
    ``preexec_fn``, so ``subprocess`` keeps its vfork path; an agent started with a
    signal ignored resets it in the child."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD_SETUP_PROBE, state],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == expected
