"""Results and run events: what the API answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cleanroom._fields import Wire
from cleanroom.doctor import DoctorCheck

__all__ = [
    "Applied",
    "ArtifactInfo",
    "ChangeCounts",
    "CleanroomInfo",
    "CleanroomList",
    "DoctorReport",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "LaunchResult",
    "RunEvent",
    "RunExit",
    "RunOutput",
    "RunResult",
    "RunStarted",
    "SandboxImage",
    "SandboxResources",
    "Terminated",
    "WorkspaceUploaded",
]

# -- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxImage(Wire):
    """The user image a context's runs use."""

    key: str
    """Content address in the image cache (``sha256:<64 hex>``)."""
    source: str
    """Where it came from: the pinned ref, ``debian:<suite>`` or ``import:<name>``."""


@dataclass(frozen=True)
class SandboxResources(Wire):
    """The machine each of a context's runs gets."""

    vcpus: int | None
    """None: the backend's own default."""
    memory_mib: int | None
    """None: the backend's own default."""
    disk_mib: int
    """Virtual size of each writable disk (the root layer and the workspace)."""


@dataclass(frozen=True)
class CleanroomInfo(Wire):
    """A launched context: its policy is compiled once and frozen for its lifetime."""

    cleanroom_id: str
    backend: str
    cwd: Path
    policy_source: Path
    policy_hash: str
    run_dir_root: Path
    read_only_workspace: bool
    created_at: str
    """RFC 3339 UTC timestamp."""
    runs: tuple[str, ...] = ()
    """Ids of the runs started in this context, oldest first."""
    image: SandboxImage | None = None
    """The user image (None: the built-in image)."""
    resources: SandboxResources | None = None
    isolation: str | None = None
    """How the context's guests are isolated: ``qemu-tcg`` (emulation; not a security
    boundary), ``qemu-kvm`` or ``firecracker-kvm``."""


@dataclass(frozen=True)
class LaunchResult(Wire):
    """A launched context, as the launch call answers it."""

    cleanroom_id: str
    backend: str
    policy_source: Path
    policy_hash: str
    run_dir_root: Path
    image: SandboxImage | None = None
    """The user image (None: the built-in image)."""
    resources: SandboxResources | None = None
    isolation: str | None = None
    """How the context's guests are isolated (see ``CleanroomInfo.isolation``)."""

    @classmethod
    def of(cls, info: CleanroomInfo) -> LaunchResult:
        """The launch answer for ``info``."""
        return cls(
            info.cleanroom_id,
            info.backend,
            info.policy_source,
            info.policy_hash,
            info.run_dir_root,
            info.image,
            info.resources,
            info.isolation,
        )


@dataclass(frozen=True)
class ChangeCounts(Wire):
    """How the workspace differs after the run from what was copied in."""

    added: int
    modified: int
    deleted: int
    mode_changed: int
    skipped: int
    """Changed files whose content did not come back (over a cap, special, unreadable)."""
    complete: bool
    """Whether every change came back whole: only then is there a diff, and can it be applied."""


@dataclass(frozen=True)
class ArtifactInfo(Wire):
    """A file copied out of the workspace (``GET /v1/runs/{run_id}/artifacts/{path}``)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Applied(Wire):
    """``POST /v1/runs/{run_id}/apply``: how many host paths were written, removed, chmod-ed."""

    written: int
    removed: int
    chmodded: int


@dataclass(frozen=True)
class RunResult(Wire):
    """The outcome of one command.

    ``stdout``/``stderr`` hold at most the service's capture limit (1 MiB each,
    decoded as UTF-8 with replacement); the complete logs are in ``run_dir``.
    """

    run_id: str
    cleanroom_id: str
    exit_code: int
    stdout: str
    stderr: str
    run_dir: Path
    plan_path: Path
    signal: str | None = None
    """Name of the signal that killed the command (``exit_code`` is then 128+N)."""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    changes: ChangeCounts | None = None
    """What changed in the workspace (None: read-only workspace, or not collected)."""
    artifacts: tuple[ArtifactInfo, ...] = ()
    """The files the request's ``artifacts`` globs matched (none matched: empty)."""
    artifacts_caps_hit: tuple[str, ...] = ()
    """Caps that cut the artifacts short (``max_files``, ``max_file_bytes``, ...)."""
    isolation: str | None = None
    """How the run's guest was isolated (``qemu-tcg``, ``qemu-kvm``, ``firecracker-kvm``)."""


@dataclass(frozen=True)
class CleanroomList(Wire):
    """``GET /v1/cleanrooms``: the live contexts, oldest first."""

    cleanrooms: tuple[CleanroomInfo, ...]


@dataclass(frozen=True)
class Terminated(Wire):
    """Terminate always answers ``true`` (it is idempotent for launched ids)."""

    terminated: bool = True


@dataclass(frozen=True)
class DoctorReport(Wire):
    """The server's readiness checks; ``ok`` is false when any failed."""

    ok: bool
    checks: tuple[DoctorCheck, ...]

    @classmethod
    def of(cls, checks: tuple[DoctorCheck, ...] | list[DoctorCheck]) -> DoctorReport:
        """The report of ``checks``."""
        return cls(all(c.status != "fail" for c in checks), tuple(checks))


@dataclass(frozen=True)
class WorkspaceUploaded(Wire):
    """``POST /v1/workspaces``: an uploaded workspace, ready to be named by one launch or exec."""

    workspace_id: str
    files: int
    directories: int
    symlinks: int
    bytes: int
    """Sum of the regular files' sizes."""
    archive_bytes: int
    """Size of the tar stream received."""
    expires_in_seconds: float
    """It is removed if no launch or exec claims it by then."""


@dataclass(frozen=True)
class Health(Wire):
    """``GET /healthz``."""

    ok: bool
    version: str
    warm_ready: int = 0
    """Warm guests ready now, over every warm pool (the next run may take one)."""
    warm_size: int = 0
    """The warm pools' configured sizes, summed (0: no pool)."""


@dataclass(frozen=True)
class ErrorDetail(Wire):
    """A stable ``code`` (see :mod:`cleanroom.errors`), a human message, structured details."""

    code: str
    message: str
    details: dict[str, Any]


@dataclass(frozen=True)
class ErrorBody(Wire):
    """Every error response: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorDetail


# -- run events ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted:
    """First event of a streamed run."""

    run_id: str
    cleanroom_id: str
    run_dir: Path
    type: Literal["started"] = "started"


@dataclass(frozen=True)
class RunOutput:
    """A chunk of the command's output, delivered as it is produced."""

    stream: Literal["stdout", "stderr"]
    data: bytes
    type: Literal["output"] = "output"


@dataclass(frozen=True)
class RunExit:
    """Last event of a successful streamed run (errors are raised instead)."""

    result: RunResult
    type: Literal["exit"] = "exit"


RunEvent = RunStarted | RunOutput | RunExit
