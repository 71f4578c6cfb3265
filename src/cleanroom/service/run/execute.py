"""Run the command in the guest, its output captured as it comes."""

from __future__ import annotations

import asyncio
import contextlib

from cleanroom.agent import AgentClient, ExitStatus
from cleanroom.service.output import OutputCapture
from cleanroom.service.record import RunRecorder
from cleanroom.service.run.plan import RunPlan
from cleanroom.service.terminal import Terminal

__all__ = ["execute_command"]


async def execute_command(
    plan: RunPlan, client: AgentClient, capture: OutputCapture, rec: RunRecorder
) -> ExitStatus:
    """Execute ``plan.command`` in the workspace with ``plan.env`` and ``plan.stdin``
    (None: an empty stdin); returns how it ended.

    A command past ``plan.timeout`` is killed by the agent and reported with
    ``timed_out`` set. Raises the agent's errors (``AgentError``).
    """
    rec.set_inputs(
        env_names=list(plan.env or ()),
        stdin_bytes=None if plan.stdin is None else len(plan.stdin),
    )
    if plan.terminal is not None:
        with rec.timed("command"):
            return await _on_terminal(plan, plan.terminal, client, capture)
    with rec.timed("command"):
        return await client.exec(
            list(plan.command),
            env=plan.env,
            stdin=plan.stdin,
            timeout=plan.timeout,
            on_output=capture.write,
        )


async def _on_terminal(
    plan: RunPlan, terminal: Terminal, client: AgentClient, capture: OutputCapture
) -> ExitStatus:
    """Run on a pseudo-terminal: input typed in, resizes and signals forwarded meanwhile."""

    async def forward() -> None:
        async for control in terminal.controls():
            if control.signal:
                await client.signal(control.signal)
            else:
                await client.resize(control.rows, control.cols)

    forwarding = asyncio.create_task(forward())
    try:
        return await client.exec(
            list(plan.command),
            env=plan.env,
            stdin=terminal.input(),
            tty=(terminal.rows, terminal.cols),
            timeout=plan.timeout,
            on_output=capture.write,
        )
    finally:
        forwarding.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await forwarding
