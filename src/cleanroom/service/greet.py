"""Boot a guest and greet its agent: the one way every guest (cold or pooled) starts.

The caller learns of the guest the moment its VMM exists (``launched``), so it
can take ownership (destroy it on every exit path) before anything else can
fail; after that the agent channel is opened and the hello answered within
the spec's ``launch_seconds``, counted from the launch call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from cleanroom.agent import AgentClient, AgentError, GuestInfo
from cleanroom.backends.base import Backend, Guest, GuestSpec, NoRestore, restore_or_reason
from cleanroom.errors import CleanroomError, RuntimeLaunchFailed

__all__ = ["RESTORE_SECONDS", "Greeted", "boot_and_greet", "greet", "restore_and_greet"]

RESTORE_SECONDS = 20.0
"""A restored guest answers in well under a second here, even on a loaded host; one
that has not answered by then is given up on (destroyed) and the run boots cold."""


@dataclass(frozen=True)
class Greeted:
    """A booted guest whose agent answered the hello."""

    guest: Guest
    client: AgentClient
    info: GuestInfo
    connect_ms: float
    """Launch call to agent channel open."""
    ready_ms: float
    """Launch call to hello answered."""


async def boot_and_greet(
    backend: Backend, spec: GuestSpec, launched: Callable[[Guest], None]
) -> Greeted:
    """Launch a guest of ``backend`` for ``spec`` and greet its agent.

    ``launched`` is called with the guest as soon as its VMM exists, before
    anything else is awaited: from then on the caller owns the guest (this
    function never destroys it). Raises ``RuntimeLaunchFailed`` (with the
    console tail) when the agent does not answer in time, and whatever the
    backend's ``launch`` / ``open_channel`` raise.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    guest = await backend.launch(spec)
    launched(guest)
    return await greet(guest, spec, started)


async def greet(guest: Guest, spec: GuestSpec, started: float) -> Greeted:
    """Open ``guest``'s agent channel and greet its agent within ``spec.launch_seconds``
    of ``started`` (a ``loop.time()``); raises as :func:`boot_and_greet` does and
    never destroys the guest."""
    loop = asyncio.get_running_loop()
    deadline = started + spec.launch_seconds
    reader, writer = await guest.open_channel(deadline)
    connect_ms = (loop.time() - started) * 1000
    client = AgentClient(reader, writer)
    try:
        info = await client.hello(timeout=max(0.1, deadline - loop.time()))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await asyncio.shield(client.close())
        if isinstance(exc, AgentError | TimeoutError):
            raise RuntimeLaunchFailed(
                f"the guest agent did not answer: {exc}",
                details={
                    "launch_seconds": spec.launch_seconds,
                    "console_tail": guest.console_tail(),
                },
            ) from exc
        raise
    return Greeted(guest, client, info, connect_ms, (loop.time() - started) * 1000)


async def restore_and_greet(
    backend: Backend, spec: GuestSpec, launched: Callable[[Guest], None]
) -> Greeted | str:
    """Resume ``spec``'s guest from ``backend``'s snapshot and greet its agent, or
    say why not (the caller then boots cold): a snapshot never fails a start.

    ``launched`` is called as in :func:`boot_and_greet`; a restored guest that
    then fails (its snapshot does not load, its agent does not answer) is
    destroyed here before the reason is returned. It has at most
    :data:`RESTORE_SECONDS` (or the spec's ``launch_seconds`` if shorter) to
    answer. Cancellation propagates.
    """
    started = asyncio.get_running_loop().time()
    quick = min(spec.launch_seconds, RESTORE_SECONDS)
    try:
        got = await restore_or_reason(backend, spec)
    except CleanroomError as exc:
        return f"restore failed: {exc.message}"
    if isinstance(got, NoRestore):
        return got.reason
    launched(got)
    try:
        return await greet(got, replace(spec, launch_seconds=quick), started)
    except CleanroomError as exc:
        await got.destroy()
        return f"restore failed: {exc.message}"
