"""The service interface the server (and tests) program against."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from cleanroom.service.types import CleanroomInfo, DoctorCheck, EventSink, LaunchOptions, RunResult

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

    async def launch(
        self, cwd: Path, *, backend: str | None = None, options: LaunchOptions | None = None
    ) -> CleanroomInfo:
        """Load and compile ``cwd``'s policy once and create a context.

        Raises ``PolicyNotFound``/``PolicyInvalid``, ``InvalidRequest`` (unknown
        backend, cwd not a directory), ``BackendUnavailable``,
        ``BackendCapabilityMismatch``.
        """

    async def run(
        self,
        cleanroom_id: str,
        command: Sequence[str],
        *,
        on_event: EventSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run ``command`` (argv, non-empty) in a fresh guest of the context.

        ``timeout`` (seconds; None: the runtime config's
        ``limits.run_timeout_seconds``) kills the command's whole process group
        when it runs longer and raises ``RunTimeout``.

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
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        on_event: EventSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Launch, run once, terminate (terminate happens also on failure)."""
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

    async def doctor(self) -> list[DoctorCheck]:
        """Host readiness checks (KVM, binaries, image, ip/nft, privileges, dirs)."""
        ...
