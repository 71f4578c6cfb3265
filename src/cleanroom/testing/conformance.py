"""Backend conformance: end-to-end scenarios every VM backend must pass.

Each scenario drives a real guest through ``Backend.launch`` and talks to its
agent with ``AgentClient`` on the stream from ``open_channel``; a failed
expectation raises ``AssertionError``. Besides the ``Backend``/``Guest``
protocols, the scenarios expect what a VM backend has: a guest's ``pid`` (its
VMM process), a private root filesystem (a write to ``/`` is gone in the next
guest), ``rootfs_*``/``vmm_start_ms`` timings, and no files named in
``LEFTOVERS`` left in the run directory after ``destroy``. Each scenario boots
guests: run them under an async test runner, e.g.
``await check_backend_conformance(MyBackend(...), tmp_path)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from cleanroom.agent import AgentClient, AgentDisconnected, ExitStatus
from cleanroom.backends.base import Backend, Guest, GuestSpec
from cleanroom.errors import RuntimeLaunchFailed

__all__ = [
    "BOOT_SECONDS",
    "LEFTOVERS",
    "check_backend_conformance",
    "commands_and_discarded_writes",
    "launch_deadline_too_short",
]

E = TypeVar("E", bound=BaseException)

BOOT_SECONDS = 120.0
"""Generous: software-emulated boots on a loaded 2-core host vary a lot."""
LEFTOVERS = (
    "rootfs.raw",
    "rootfs.qcow2",
    "workspace.ext4",
    "scratch.ext4",
    "fc.sock",
    "vsock.sock",
)


class Output:
    """Collects a command's output; ``seen`` is set at the first chunk."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.seen = asyncio.Event()

    async def __call__(self, stream: Literal["stdout", "stderr"], data: bytes) -> None:
        (self.stdout if stream == "stdout" else self.stderr).extend(data)
        self.seen.set()


async def _raises(kind: type[E], awaitable: Any) -> E:
    """The ``kind`` error ``awaitable`` raised; AssertionError if it raised none."""
    try:
        await awaitable
    except kind as exc:
        return exc
    raise AssertionError(f"expected {kind.__name__}")


async def run(client: AgentClient, script: str) -> tuple[ExitStatus, Output]:
    out = Output()
    status = await client.exec(["/bin/sh", "-c", script], cwd="/", timeout=60, on_output=out)
    return status, out


def fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_nothing_left(guest: Guest, run_dir: Path, pid: int) -> None:
    assert not alive(pid), "VMM process still exists (not killed or not reaped)"
    assert guest.exited() is not None
    for name in LEFTOVERS:
        assert not (run_dir / name).exists(), f"{name} left behind"
    assert guest.plan_path.is_file()  # the run record stays


@contextlib.asynccontextmanager
async def booted(
    backend: Backend, run_dir: Path, run_id: str
) -> AsyncIterator[tuple[Guest, AgentClient]]:
    guest = await backend.launch(GuestSpec(run_id, fresh_dir(run_dir), BOOT_SECONDS))
    writer: asyncio.StreamWriter | None = None
    try:
        loop = asyncio.get_running_loop()
        reader, writer = await guest.open_channel(loop.time() + BOOT_SECONDS)
        client = AgentClient(reader, writer)
        await client.hello(timeout=BOOT_SECONDS)
        yield guest, client
    finally:
        if writer is not None:
            # Ours to close: a writer left to the garbage collector after its loop
            # has closed warns ("loop is closed").
            writer.close()
        await guest.destroy()


async def commands_and_discarded_writes(backend: Backend, tmp_path: Path) -> None:
    """Boot 1: exit codes, signals, both streams, a write to /. Boot 2: the write is
    gone; then the VMM is killed mid-command. Nothing is left behind either time."""
    first_dir = tmp_path / "run-1"
    async with booted(backend, first_dir, "run-1") as (guest, client):
        pid = guest.pid  # type: ignore[attr-defined]
        for code in (0, 1, 7):
            status, _ = await run(client, f"exit {code}")
            assert (status.exit_code, status.signal) == (code, None)
        status, _ = await run(client, "kill -TERM $$")
        assert status.signal == signal.SIGTERM
        assert status.exit_code == 128 + signal.SIGTERM
        assert status.signal_name == "SIGTERM"
        status, out = await run(client, "echo to-out; echo to-err >&2; exit 3")
        assert status.exit_code == 3
        assert bytes(out.stdout) == b"to-out\n"
        assert bytes(out.stderr) == b"to-err\n"
        status, _ = await run(client, "echo written > /cleanroom-marker && sync")
        assert status.exit_code == 0
        status, out = await run(client, "cat /cleanroom-marker")
        assert bytes(out.stdout) == b"written\n"
        timings = dict(guest.timings)
        assert {"rootfs_prepare_ms", "vmm_start_ms"} <= set(timings)
        assert guest.facts.rootfs_method in ("reflink", "copy", "qcow2-overlay")
        assert guest.facts.workspace_seeded is False  # booted without a workspace
        assert all(isinstance(v, float | int) and not isinstance(v, bool) for v in timings.values())
        assert guest.plan_path.is_file()
    assert_nothing_left(guest, first_dir, pid)

    second_dir = tmp_path / "run-2"
    async with booted(backend, second_dir, "run-2") as (guest, client):
        pid = guest.pid  # type: ignore[attr-defined]
        status, out = await run(client, "test -e /cleanroom-marker && echo present || echo absent")
        assert bytes(out.stdout) == b"absent\n"

        out = Output()
        command = asyncio.create_task(
            client.exec(
                ["/bin/sh", "-c", "echo started; exec sleep 600"],
                cwd="/",
                timeout=None,
                on_output=out,
            )
        )
        await asyncio.wait_for(out.seen.wait(), 60)
        os.kill(pid, signal.SIGKILL)  # the VMM dies mid-run
        await _raises(AgentDisconnected, asyncio.wait_for(command, 60))
    assert_nothing_left(guest, second_dir, pid)


async def launch_deadline_too_short(backend: Backend, tmp_path: Path) -> None:
    """A guest not ready within ``launch_seconds``: RuntimeLaunchFailed with the
    console tail, and destroy leaves nothing behind."""
    run_dir = fresh_dir(tmp_path / "short")
    guest = await backend.launch(GuestSpec("short", run_dir, 0.5))
    pid = guest.pid  # type: ignore[attr-defined]
    try:
        loop = asyncio.get_running_loop()
        error = await _raises(RuntimeLaunchFailed, guest.open_channel(loop.time() + 0.5))
        assert "console_tail" in error.details
        assert isinstance(error.details["console_tail"], list)
        assert error.details["run_id"] == "short"
    finally:
        await guest.destroy()
    await guest.destroy()  # idempotent
    assert_nothing_left(guest, run_dir, pid)


async def check_backend_conformance(backend: Backend, tmp_path: Path) -> None:
    """Every scenario of this module, in turn, with run directories under ``tmp_path``."""
    await commands_and_discarded_writes(backend, tmp_path / "commands")
    await launch_deadline_too_short(backend, tmp_path / "deadline")
