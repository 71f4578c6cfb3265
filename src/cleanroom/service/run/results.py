"""What comes back from the guest after the command: workspace changes and artifacts.

Collected through the agent while the guest still runs (the run answers as
soon as this is done and the guest is killed right after). Everything the
guest sends is validated by :mod:`cleanroom.changes` (paths inside the
workspace, sizes capped, contents checked against their sha256, no device
files). A failure to collect is recorded and leaves the run's own outcome
alone: the command has exited, and a guest that sends garbage spoils only
its own changes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cleanroom.agent import AgentClient, AgentError
from cleanroom.changes import (
    ArtifactList,
    ChangeSet,
    FileLimits,
    HostManifest,
    collect_artifacts,
    collect_changes,
)
from cleanroom.errors import CleanroomError
from cleanroom.models import ArtifactInfo, ChangeCounts
from cleanroom.service.changestore import CHANGES_DIR, StoredChanges, save_changes
from cleanroom.service.record import JsonValue, RunRecorder, error_dict
from cleanroom.service.run.plan import RunPlan

__all__ = ["ARTIFACTS_DIR", "ARTIFACT_LIMITS", "CHANGE_LIMITS", "Collected", "collect_results"]

ARTIFACTS_DIR = "artifacts"
CHANGE_LIMITS = FileLimits(max_files=10_000, max_file_bytes=64 << 20, max_total_bytes=256 << 20)
"""Caps on the changes a run brings back (beyond them the change set is incomplete:
the record still counts what came, but there is no patch to render or apply)."""
ARTIFACT_LIMITS = FileLimits(max_files=1000, max_file_bytes=256 << 20, max_total_bytes=1 << 30)
"""Caps on the artifacts of one run (hitting one is reported in the record and result)."""
MAX_RECORDED_PATHS = 100


@dataclass(frozen=True)
class Collected:
    """What came back: the changes (None: read-only or failed) and the artifacts."""

    changes: StoredChanges | None = None
    artifacts: ArtifactList | None = None

    def counts(self) -> ChangeCounts | None:
        """The result's ``changes`` value."""
        if self.changes is None:
            return None
        s = self.changes.changes.summary()
        return ChangeCounts(
            s.added, s.modified, s.deleted, s.mode_changed, s.skipped, self.changes.changes.complete
        )

    def artifact_infos(self) -> tuple[ArtifactInfo, ...]:
        """The result's ``artifacts`` value."""
        if self.artifacts is None:
            return ()
        return tuple(ArtifactInfo(a.path, a.size, a.sha256) for a in self.artifacts.artifacts)


async def collect_results(
    plan: RunPlan, client: AgentClient, manifest: HostManifest | None, rec: RunRecorder
) -> Collected:
    """Collect the workspace's changes (when ``manifest`` is given: a writable workspace)
    and the artifacts ``plan`` asks for; record what came back.

    Cancellation propagates; other failures are recorded (``error`` in the
    record's ``changes`` / ``workspace_artifacts``) and yield no value.
    """
    stored = None
    if manifest is not None:
        stored = await _changes(plan, client, manifest, rec)
    artifacts = None
    if plan.artifacts:
        artifacts = await _artifacts(plan, client, rec)
    return Collected(stored, artifacts)


async def _changes(
    plan: RunPlan, client: AgentClient, manifest: HostManifest, rec: RunRecorder
) -> StoredChanges | None:
    try:
        with rec.timed("changes"):
            cs = await collect_changes(client, plan.run_dir / CHANGES_DIR, manifest, CHANGE_LIMITS)
            stored = StoredChanges(cs, manifest, plan.cwd)
            await asyncio.to_thread(save_changes, plan.run_dir, stored)
    except (CleanroomError, AgentError, OSError) as exc:
        rec.set_changes({"error": _error(exc)})
        return None
    rec.set_changes(_summary(cs))
    return stored


def _summary(cs: ChangeSet) -> dict[str, JsonValue]:
    summary: dict[str, JsonValue] = dict(cs.summary(MAX_RECORDED_PATHS).to_dict())
    summary["complete"] = cs.complete
    summary["patch"] = None
    return summary


async def _artifacts(plan: RunPlan, client: AgentClient, rec: RunRecorder) -> ArtifactList | None:
    try:
        with rec.timed("artifacts"):
            found = await collect_artifacts(
                client, plan.artifacts, plan.run_dir / ARTIFACTS_DIR, ARTIFACT_LIMITS
            )
    except (CleanroomError, AgentError, OSError) as exc:
        rec.set_workspace_artifacts({"patterns": list(plan.artifacts), "error": _error(exc)})
        return None
    listing: dict[str, JsonValue] = dict(found.to_dict())
    listing["patterns"] = list(plan.artifacts)
    listing["dir"] = ARTIFACTS_DIR
    rec.set_workspace_artifacts(listing)
    return found


def _error(exc: BaseException) -> dict[str, JsonValue]:
    if isinstance(exc, CleanroomError):
        return error_dict(exc)
    if isinstance(exc, AgentError):
        return {"code": "guest_agent_failed", "message": str(exc)}
    return {"code": "internal_error", "message": str(exc)}
