"""The values that cross the API: requests, results, run events (frozen dataclasses).

One definition serves the service, the server and both clients. Each field rule
(absolute paths, no NUL bytes, the timeout bound, a non-empty argv) is stated
once, as metadata on the field (see :mod:`cleanroom._fields`): requests check
their rules when built, the server has pydantic enforce the same rules and
publish them in the OpenAPI document, and clients parse responses strictly
with :func:`from_dict` (unknown keys are errors). Standard library only, so
the sync client stays fast to import.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from cleanroom._fields import (
    MAX_STDIN_BYTES,
    Absolute,
    Argv,
    Base64,
    Bounds,
    EnvNames,
    Globs,
    NonEmpty,
    NoNul,
    Wire,
    check,
    from_dict,
    to_dict,
)
from cleanroom.doctor import DoctorCheck

__all__ = [
    "MAX_LAUNCH_SECONDS",
    "MAX_STDIN_BYTES",
    "MAX_TIMEOUT_SECONDS",
    "Applied",
    "ArtifactInfo",
    "ChangeCounts",
    "CleanroomInfo",
    "CleanroomList",
    "DoctorCheck",
    "DoctorReport",
    "ErrorBody",
    "ErrorDetail",
    "ExecRequest",
    "Health",
    "LaunchOptions",
    "LaunchRequest",
    "LaunchResult",
    "RunEvent",
    "RunExit",
    "RunOutput",
    "RunRequest",
    "RunResult",
    "RunStarted",
    "SandboxImage",
    "SandboxResources",
    "TerminateRequest",
    "Terminated",
    "WorkspaceUploaded",
    "encode_stdin",
    "from_dict",
    "to_dict",
]

MAX_TIMEOUT_SECONDS = 86400.0
"""The longest command timeout a request may ask for (one day)."""
MAX_LAUNCH_SECONDS = 3600.0
"""The longest a request may let a guest take to become ready (one hour)."""

AbsPath = Annotated[Path, Absolute()]
Name = Annotated[str, NoNul()]
Id = Annotated[str, NonEmpty(), NoNul()]
Command = Annotated[tuple[str, ...], Argv()]
"""argv, run without a shell (a list on the wire)."""
Timeout = Annotated[float, Bounds(gt=0, le=MAX_TIMEOUT_SECONDS)]
"""Kill the command's process group after this many seconds (error ``run_timeout``)."""
ImageOverride = Annotated[str, NonEmpty(), NoNul()]
"""An image ref overriding the policy's. Only its shape is checked here; whether it
is a digest-pinned ref (``policy_invalid`` if not) and whether overriding is
allowed (``policy_conflict``) is the service's decision at launch."""
Env = Annotated[dict[str, str], EnvNames()]
"""Environment variables for the command, laid over the guest's defaults.

A name is non-empty, without ``=`` or NUL (else ``invalid_request``). Values
are never written to run records, plan files, logs or error messages; the
record lists the names."""
Stdin = Annotated[str, Base64(MAX_STDIN_BYTES)]
"""The command's standard input, base64-encoded, at most 512 KiB decoded (a request
body is at most 1 MiB); EOF follows. Without it the command's stdin is empty."""
ArtifactGlobs = Annotated[tuple[str, ...], Globs()]
"""Workspace files to keep after the run: relative globs (``*``, ``?``, ``**``)."""


def _decoded(stdin_base64: str | None) -> bytes | None:
    return None if stdin_base64 is None else base64.b64decode(stdin_base64)


def encode_stdin(data: bytes | None) -> str | None:
    """``data`` as the requests' ``stdin_base64`` value."""
    return None if data is None else base64.b64encode(data).decode("ascii")


# -- requests ------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchOptions(Wire):
    """Per-context options given at launch (all optional).

    Its rules are checked when it travels in a request (``LaunchRequest``,
    ``ExecRequest``), not when it is built, so a service may be handed one to judge.
    """

    run_dir: AbsPath | None = None
    """Root under which each run's directory is created (default: the state dir's ``runs/``)."""
    read_only_workspace: bool | None = None
    """Mount /workspace read-only in the guest (default: runtime config ``workspace.access``)."""
    launch_seconds: Annotated[float, Bounds(gt=0, le=MAX_LAUNCH_SECONDS)] | None = None
    """How long a guest may take to become ready (default: the backend's config)."""
    image: ImageOverride | None = None
    """A digest-pinned image ref to run in instead of the policy's ``sandbox.image``
    (refused with ``policy_conflict`` when the runtime config forbids overrides)."""
    expected_policy_hash: Annotated[str, NonEmpty(), NoNul()] | None = None
    """The ``policy_hash`` the caller has reviewed (hex, ``sha256:`` prefix optional);
    any other policy in ``cwd`` is refused with ``policy_conflict``."""


@dataclass(frozen=True)
class LaunchRequest(Wire):
    """``POST /v1/cleanrooms/launch``."""

    cwd: AbsPath
    """Absolute path of the repository directory (holds the policy). With
    ``workspace_id``: the client's own path of the uploaded directory (recorded,
    never opened on the server)."""
    backend: Name | None = None
    """Backend name; default from the runtime config."""
    options: LaunchOptions | None = None
    workspace_id: Id | None = None
    """An uploaded workspace (``POST /v1/workspaces``) to use instead of the server
    directory ``cwd``; it is used once (the context owns it)."""

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class RunRequest(Wire):
    """``POST /v1/cleanrooms/run``."""

    cleanroom_id: Id
    command: Command
    """argv, run without a shell."""
    timeout_seconds: Timeout | None = None
    """Kill the command's process group after this many seconds (error ``run_timeout``)."""
    env: Env | None = field(default=None, repr=False)
    """Environment variables for the command (names to values; values stay secret)."""
    stdin_base64: Stdin | None = field(default=None, repr=False)
    """Standard input, base64 (at most 512 KiB decoded), then EOF; default: empty."""
    artifacts: ArtifactGlobs | None = None
    """Globs of workspace files to copy into the run directory's ``artifacts/``."""

    def __post_init__(self) -> None:
        check(self)
        object.__setattr__(self, "command", tuple(self.command))
        if self.artifacts is not None:
            object.__setattr__(self, "artifacts", tuple(self.artifacts))

    @property
    def stdin_bytes(self) -> bytes | None:
        """The decoded standard input (None: none given)."""
        return _decoded(self.stdin_base64)


@dataclass(frozen=True)
class TerminateRequest(Wire):
    """``POST /v1/cleanrooms/terminate``."""

    cleanroom_id: Id

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class ExecRequest(Wire):
    """``POST /v1/exec``: launch, run once, terminate."""

    cwd: AbsPath
    """Absolute path of the repository directory (holds the policy). With
    ``workspace_id``: the client's own path of the uploaded directory."""
    command: Command
    """argv, run without a shell."""
    backend: Name | None = None
    """Backend name; default from the runtime config."""
    options: LaunchOptions | None = None
    timeout_seconds: Timeout | None = None
    """Kill the command's process group after this many seconds (error ``run_timeout``)."""
    env: Env | None = field(default=None, repr=False)
    """Environment variables for the command (names to values; values stay secret)."""
    stdin_base64: Stdin | None = field(default=None, repr=False)
    """Standard input, base64 (at most 512 KiB decoded), then EOF; default: empty."""
    artifacts: ArtifactGlobs | None = None
    """Globs of workspace files to copy into the run directory's ``artifacts/``."""
    workspace_id: Id | None = None
    """An uploaded workspace (``POST /v1/workspaces``) to use instead of the server
    directory ``cwd``; it is used once."""

    def __post_init__(self) -> None:
        check(self)
        object.__setattr__(self, "command", tuple(self.command))
        if self.artifacts is not None:
            object.__setattr__(self, "artifacts", tuple(self.artifacts))

    @property
    def stdin_bytes(self) -> bytes | None:
        """The decoded standard input (None: none given)."""
        return _decoded(self.stdin_base64)

    @property
    def launch(self) -> LaunchRequest:
        """The launch half of the request."""
        return LaunchRequest(self.cwd, self.backend, self.options, self.workspace_id)


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
