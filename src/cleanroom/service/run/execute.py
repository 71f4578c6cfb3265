"""Run the command in the guest, its output captured as it comes."""

from __future__ import annotations

from cleanroom.agent import AgentClient, ExitStatus
from cleanroom.service.output import OutputCapture
from cleanroom.service.record import RunRecorder
from cleanroom.service.run.plan import RunPlan

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
    with rec.timed("command"):
        return await client.exec(
            list(plan.command),
            env=plan.env,
            stdin=plan.stdin,
            timeout=plan.timeout,
            on_output=capture.write,
        )
