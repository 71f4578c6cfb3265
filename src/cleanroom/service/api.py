"""The service interface the server (and tests) program against."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cleanroom.models import Applied
from cleanroom.service.types import (
    CleanroomInfo,
    DoctorCheck,
    EventSink,
    LaunchOptions,
    RunOptions,
    RunResult,
)

if TYPE_CHECKING:  # the service's own modules stay unloaded for the CLI
    from cleanroom.service.uploads import Upload

__all__ = ["ServiceAPI"]


class ServiceAPI(Protocol):
    """Contexts and runs. Every method raises only :class:`~cleanroom.errors.CleanroomError`s.

    Safe for concurrent use from one asyncio loop: several runs in one context
    and several contexts at once.
    """

    async def start(self) -> None:
        """Reconcile leftovers from a crashed server and start background work."""

    async def close(self) -> None:
        """Cancel running runs and destroy every guest and network resource. Idempotent."""

    async def upload_workspace(self, chunks: AsyncIterator[bytes]) -> Upload:
        """Receive a workspace as an uncompressed tar stream (``chunks``), extracted
        strictly, for one later launch or exec (``workspace_id``); unclaimed, it
        expires. Raises ``WorkspaceInvalid``, ``WorkspaceTooLarge`` (the
        ``limits.workspace_*`` caps), ``CapacityExhausted``."""
        ...

    async def launch(
        self,
        cwd: Path,
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        workspace_id: str | None = None,
        local: bool = True,
    ) -> CleanroomInfo:
        """Load and compile ``cwd``'s policy once and create a context.

        With ``workspace_id`` the context uses (and owns) that uploaded
        workspace instead of ``cwd``. A caller that is not ``local`` (not on the
        owner-only unix socket) may name a server ``cwd`` only under the runtime
        config's ``workspace.roots``.

        Raises ``PolicyNotFound``/``PolicyInvalid``, ``InvalidRequest`` (unknown
        backend, cwd not a directory or not allowed), ``WorkspaceInvalid`` (no
        such upload), ``PolicyConflict`` (not the
        ``options.expected_policy_hash``; beyond the runtime config's
        ``policy.ceiling``, every excess in ``details['excess']``),
        ``BackendUnavailable``, ``BackendCapabilityMismatch`` (also when the
        backend's isolation is weaker than ``sandbox.isolation`` or the runtime
        config's ``policy.isolation`` require).
        """

    async def run(
        self,
        cleanroom_id: str,
        command: Sequence[str],
        run: RunOptions | None = None,
        *,
        on_event: EventSink | None = None,
    ) -> RunResult:
        """Run ``command`` (argv, non-empty) in a fresh guest of the context, as ``run``
        (None: all defaults) asks.

        ``run.timeout`` (seconds; None: the runtime config's
        ``limits.run_timeout_seconds``, capped by ``policy.ceiling.max``; more
        than that maximum: ``PolicyConflict``) kills the command's whole process
        group when it runs longer and raises ``RunTimeout``. ``run.env`` is laid over
        the guest's defaults (its values are never recorded); ``run.stdin`` (at most
        512 KiB) is the command's standard input, then EOF (None: empty).
        After the command, the workspace's changes (writable workspaces) and the
        files matching ``run.artifacts`` (relative globs) are collected from the
        guest. With ``run.terminal`` the command runs on a pseudo-terminal of its
        size, fed by its input (``run.stdin`` unused), its resizes and signals
        forwarded.

        ``on_event`` receives ``RunStarted``, then ``RunOutput`` chunks as they
        are produced, then ``RunExit``. Cancelling the calling task cancels the
        run and destroys its guest. Raises ``CleanroomNotFound``,
        ``InvalidRequest``, ``RuntimeLaunchFailed``, ``GuestAgentFailed``,
        ``RunTimeout``, ``RunCancelled``, ``OutputLimitExceeded``,
        ``WorkspaceTooLarge``, ``CapacityExhausted`` (``limits``).

        When it returns, the guest has been killed (nothing of the run executes
        any more); reaping it and releasing its disks and network finish in the
        background, and ``run_record`` waits for that.
        """
        ...

    async def terminate(self, cleanroom_id: str) -> None:
        """Cancel the context's running runs and forget it. Idempotent for known ids;
        raises ``CleanroomNotFound`` for ids never launched."""

    async def exec(
        self,
        cwd: Path,
        command: Sequence[str],
        run: RunOptions | None = None,
        *,
        on_event: EventSink | None = None,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        workspace_id: str | None = None,
        local: bool = True,
    ) -> RunResult:
        """Launch, run once, terminate (terminate happens also on failure); ``run`` and
        ``on_event`` as for :meth:`run`, the other arguments as for :meth:`launch`."""
        ...

    def list_cleanrooms(self) -> list[CleanroomInfo]:
        """The live contexts, oldest first."""
        ...

    async def run_record(self, run_id: str) -> dict[str, Any]:
        """The run's ``run-observability.json`` content. Raises ``RunNotFound``.

        For a run whose guest and network are still being released in the
        background, waits until that is done, so the record is complete.
        """
        ...

    async def run_diff(self, run_id: str) -> bytes:
        """The run's workspace changes as a git-format binary patch (empty: no change).

        Raises ``RunNotFound``; ``InvalidRequest`` when the run has no (complete)
        change set; ``WorkspaceConflict`` when the host's base changed before the
        patch could be made.
        """
        ...

    async def run_artifact(self, run_id: str, path: str) -> Path:
        """The file of the run's artifact ``path`` (relative, as listed in the record).

        Raises ``RunNotFound``, ``InvalidRequest`` (malformed path), ``NotFound``.
        """
        ...

    async def apply_changes(self, run_id: str) -> Applied:
        """Apply the run's workspace changes to the host directory it came from.

        Raises ``RunNotFound``, ``InvalidRequest`` (no or an incomplete change set),
        ``WorkspaceConflict`` (a changed host path was modified since the copy;
        nothing is written).
        """
        ...

    async def doctor(self) -> list[DoctorCheck]:
        """Host readiness checks (KVM, binaries, image, ip/nft, privileges, dirs)."""
        ...

    def warm_guests(self) -> tuple[int, int]:
        """``(ready, size)`` of the warm pools, summed: cheap (no checks run), for
        ``/healthz`` and for callers that wait for a warm guest."""
        ...
