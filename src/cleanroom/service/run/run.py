"""One run, start to finish: obtain a guest, transfer, execute, answer, release.

This is the only place that speaks the agent protocol on the host (through
its steps), so command execution exists once for every backend. Whatever
happens (success, failure, timeout, cancellation, an unexpected exception) the
guest and the run's network are released by the run's :class:`RunResources`
and a complete run record is written, holding the error the caller sees.
"""

from __future__ import annotations

import asyncio

from cleanroom.agent import AgentError, ExitStatus
from cleanroom.backends.base import Backend
from cleanroom.errors import CleanroomError, RunCancelled, RunTimeout
from cleanroom.models import to_dict
from cleanroom.service.agent_errors import translate_agent_error
from cleanroom.service.boots import BootGate
from cleanroom.service.changestore import render_stored
from cleanroom.service.network import RunNetworks
from cleanroom.service.output import OutputCapture
from cleanroom.service.pool import WarmPool
from cleanroom.service.record import RunRecorder, Status, error_dict
from cleanroom.service.repair import hold_run
from cleanroom.service.run.execute import execute_command
from cleanroom.service.run.obtain import Obtained, obtain_guest
from cleanroom.service.run.plan import Defer, RunPlan
from cleanroom.service.run.resources import RunResources
from cleanroom.service.run.results import Collected, collect_results
from cleanroom.service.run.transfer import configure_and_transfer
from cleanroom.service.types import EventSink, RunExit, RunResult, RunStarted
from cleanroom.service.workspace import check_workspace_size, scan_workspace

__all__ = ["execute_run"]


async def execute_run(
    plan: RunPlan,
    backend: Backend,
    network: RunNetworks | None,
    on_event: EventSink | None,
    pool: WarmPool | None = None,
    boots: BootGate | None = None,
    defer: Defer | None = None,
) -> RunResult:
    """Run ``plan`` in a fresh guest and return its result.

    Raises ``RuntimeLaunchFailed``, ``GuestAgentFailed``, ``RunTimeout``,
    ``NetworkSetupFailed`` or ``RunCancelled`` (also when this task is
    cancelled, after cleanup); an unexpected exception propagates unchanged
    (recorded as ``internal_error``). Cleanup always runs, shielded from
    cancellation, before a failed run raises.

    When the command exits, the guest's VMM is killed before the result is
    returned. Releasing the rest (reaping, disks, network, the final run
    record) then goes to ``defer`` if given (see ``cleanroom.service.finalize``);
    without it, it completes before this returns.
    """
    plan.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    rec = RunRecorder(
        run_id=plan.run_id,
        cleanroom_id=plan.cleanroom_id,
        backend=plan.backend_name,
        policy_hash=plan.policy.policy_hash,
        command=list(plan.command),
        run_dir=plan.run_dir,
    )
    image = plan.image
    rec.set_sandbox(
        image=None if image is None else {"key": image.key, "source": image.source},
        resources={} if plan.machine is None else to_dict(plan.machine),
    )
    capture = OutputCapture(plan.run_dir, on_event, plan.limits.output_log_bytes)
    res = RunResources(rec)
    res.push(hold_run(plan.run_dir).release)  # released last: the run's owner is alive till then
    status: ExitStatus | None = None
    try:
        if on_event is not None:
            await on_event(RunStarted(plan.run_id, plan.cleanroom_id, plan.run_dir))
        obtained, status, collected = await _run_in_guest(
            plan, backend, network, pool, boots, rec, capture, res
        )
        _check_in_time(plan, status)
    except BaseException as exc:
        await _fail(exc, plan, rec, capture, res, status)
        raise
    # The answer is complete: nothing of the run may execute past this point.
    obtained.guest.kill()
    capture.close()
    _record_output(rec, capture)
    rec.finish(
        status="exited", exit_code=status.exit_code, signal=status.signal_name, cleanup="pending"
    )
    result = RunResult(
        run_id=plan.run_id,
        cleanroom_id=plan.cleanroom_id,
        exit_code=status.exit_code,
        stdout=capture.text("stdout"),
        stderr=capture.text("stderr"),
        run_dir=plan.run_dir,
        plan_path=obtained.plan_path,
        signal=status.signal_name,
        stdout_truncated=capture.truncated("stdout"),
        stderr_truncated=capture.truncated("stderr"),
        changes=collected.counts(),
        artifacts=collected.artifact_infos(),
        artifacts_caps_hit=collected.artifacts.caps_hit if collected.artifacts else (),
        isolation=obtained.guest.isolation,
    )
    finalizer = _finalize(res, rec, plan, collected)
    if defer is not None:
        defer(plan.run_id, finalizer)
    else:
        await finalizer
    if on_event is not None:
        await on_event(RunExit(result))
    return result


async def _run_in_guest(
    plan: RunPlan,
    backend: Backend,
    network: RunNetworks | None,
    pool: WarmPool | None,
    boots: BootGate | None,
    rec: RunRecorder,
    capture: OutputCapture,
    res: RunResources,
) -> tuple[Obtained, ExitStatus, Collected]:
    with rec.timed("workspace_scan"):
        scan = await asyncio.to_thread(scan_workspace, plan.cwd)
    check_workspace_size(scan, plan.limits)  # before anything is copied or booted
    obtained = await obtain_guest(plan, backend, network, pool, boots, scan, rec, res)
    try:
        manifest = await configure_and_transfer(plan, obtained, scan, rec, res)
        status = await execute_command(plan, obtained.client, capture, rec)
    except AgentError as exc:
        raise translate_agent_error(exc, obtained.guest) from exc
    collected = Collected()
    if not status.timed_out:
        # Before the answer: the guest is killed right after it.
        collected = await collect_results(plan, obtained.client, manifest, rec)
    return obtained, status, collected


def _record_output(rec: RunRecorder, capture: OutputCapture) -> None:
    rec.set_output(
        stdout_truncated=capture.truncated("stdout"),
        stderr_truncated=capture.truncated("stderr"),
    )


def _check_in_time(plan: RunPlan, status: ExitStatus) -> None:
    """Raise ``RunTimeout`` if the agent killed the command at its timeout."""
    if status.timed_out:
        raise RunTimeout(
            f"the command did not finish within {plan.timeout} s and was killed",
            details={"run_id": plan.run_id, "run_dir": str(plan.run_dir)},
        )


async def _fail(
    exc: BaseException,
    plan: RunPlan,
    rec: RunRecorder,
    capture: OutputCapture,
    res: RunResources,
    status: ExitStatus | None,
) -> None:
    """Release everything, then record ``exc`` as the caller will see it."""
    failure: CleanroomError | None = None
    try:
        await res.close()
    except Exception as cleanup_exc:  # noqa: BLE001 -- recorded; the run's own error is raised
        failure = _as_cleanroom(cleanup_exc)
    capture.close()
    _record_output(rec, capture)
    outcome: Status = "error"
    if isinstance(exc, asyncio.CancelledError):
        error: CleanroomError = RunCancelled(
            "the run was cancelled", details={"run_id": plan.run_id}
        )
        outcome = "cancelled"
    elif isinstance(exc, CleanroomError):
        exc.details.setdefault("run_id", plan.run_id)
        exc.details.setdefault("run_dir", str(plan.run_dir))
        error = exc
        outcome = "timeout" if isinstance(exc, RunTimeout) else "error"
    else:
        error = _as_cleanroom(exc)
    rec.finish(
        status=outcome,
        exit_code=status.exit_code if status is not None else None,
        signal=status.signal_name if status is not None else None,
        error=error,
        cleanup="done" if failure is None else "failed",
    )
    if failure is not None:
        rec.cleaned_up(failure)


async def _finalize(
    res: RunResources, rec: RunRecorder, plan: RunPlan, collected: Collected
) -> None:
    """Release a finished run's resources, render its patch, then complete its record."""
    try:
        await res.close()
    except Exception as exc:
        await _render_patch(plan, rec, collected)
        rec.cleaned_up(_as_cleanroom(exc))
        raise
    await _render_patch(plan, rec, collected)
    rec.cleaned_up()


async def _render_patch(plan: RunPlan, rec: RunRecorder, collected: Collected) -> None:
    """The run's patch into its run directory (``changes.patch``), or why there is none."""
    stored = collected.changes
    if stored is None or not stored.changes.changes:
        return
    try:
        path = await asyncio.to_thread(render_stored, plan.run_dir, stored)
    except CleanroomError as exc:
        rec.update_changes(patch_error=error_dict(exc))
    else:
        rec.update_changes(patch=str(path.relative_to(plan.run_dir)))


def _as_cleanroom(exc: BaseException) -> CleanroomError:
    """``exc`` as the service's callers see it (anything unexpected: ``internal_error``)."""
    return exc if isinstance(exc, CleanroomError) else CleanroomError(repr(exc))
