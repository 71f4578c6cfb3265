"""The HTTP API's request and response bodies (pydantic models, unknown keys rejected).

These models are the OpenAPI document: every route declares them, so the
published schema is exactly what the server accepts and returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cleanroom.service.types import CleanroomInfo, DoctorCheck, LaunchOptions, RunResult

__all__ = [
    "CleanroomModel",
    "CleanroomsResponse",
    "DoctorCheckModel",
    "DoctorResponse",
    "ErrorBody",
    "ErrorDetail",
    "ExecRequest",
    "HealthResponse",
    "LaunchOptionsModel",
    "LaunchRequest",
    "LaunchResponse",
    "RunRequest",
    "RunResponse",
    "TerminateRequest",
    "TerminateResponse",
]

_REQUEST = ConfigDict(extra="forbid", strict=True)
_RESPONSE = ConfigDict(extra="forbid")

NoNul = Annotated[str, Field(pattern=r"^[^\x00]*$")]
"""A string without NUL bytes (which no path or argv element can carry)."""
Command = list[NoNul]


class LaunchOptionsModel(BaseModel):
    """Per-context options; every field is optional."""

    model_config = _REQUEST

    run_dir: NoNul | None = Field(
        default=None, description="Absolute directory under which run directories are created."
    )
    read_only_workspace: bool | None = Field(
        default=None, description="Mount /workspace read-only in the guest."
    )
    launch_seconds: float | None = Field(
        default=None, gt=0, description="How long a guest may take to become ready."
    )

    def to_options(self) -> LaunchOptions:
        """The service-layer value (paths are checked absolute by the route)."""
        return LaunchOptions(
            run_dir=Path(self.run_dir) if self.run_dir is not None else None,
            read_only_workspace=self.read_only_workspace,
            launch_seconds=self.launch_seconds,
        )


class LaunchRequest(BaseModel):
    """``POST /v1/cleanrooms/launch``."""

    model_config = _REQUEST

    cwd: NoNul = Field(description="Absolute path of the repository directory (holds the policy).")
    backend: NoNul | None = Field(default=None, description="Backend name; default from config.")
    options: LaunchOptionsModel | None = None


_TIMEOUT = "Kill the command's process group after this many seconds (error run_timeout)."


class RunRequest(BaseModel):
    """``POST /v1/cleanrooms/run``."""

    model_config = _REQUEST

    cleanroom_id: NoNul = Field(min_length=1)
    command: Command = Field(min_length=1, description="argv, run without a shell.")
    timeout_seconds: float | None = Field(default=None, gt=0, le=86400, description=_TIMEOUT)


class TerminateRequest(BaseModel):
    """``POST /v1/cleanrooms/terminate``."""

    model_config = _REQUEST

    cleanroom_id: NoNul = Field(min_length=1)


class ExecRequest(BaseModel):
    """``POST /v1/exec``: launch, run once, terminate."""

    model_config = _REQUEST

    cwd: NoNul = Field(description="Absolute path of the repository directory (holds the policy).")
    command: Command = Field(min_length=1, description="argv, run without a shell.")
    backend: NoNul | None = None
    options: LaunchOptionsModel | None = None
    timeout_seconds: float | None = Field(default=None, gt=0, le=86400, description=_TIMEOUT)


class LaunchResponse(BaseModel):
    """A launched context."""

    model_config = _RESPONSE

    cleanroom_id: str
    backend: str
    policy_source: str
    policy_hash: str
    run_dir_root: str

    @classmethod
    def of(cls, info: CleanroomInfo) -> LaunchResponse:
        """Build from the service value."""
        return cls(
            cleanroom_id=info.cleanroom_id,
            backend=info.backend,
            policy_source=str(info.policy_source),
            policy_hash=info.policy_hash,
            run_dir_root=str(info.run_dir_root),
        )


class RunResponse(BaseModel):
    """The outcome of one command (``stdout``/``stderr`` capped; full logs in ``run_dir``)."""

    model_config = _RESPONSE

    run_id: str
    cleanroom_id: str
    exit_code: int
    stdout: str
    stderr: str
    run_dir: str
    plan_path: str
    signal: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @classmethod
    def of(cls, result: RunResult) -> RunResponse:
        """Build from the service value."""
        return cls(
            run_id=result.run_id,
            cleanroom_id=result.cleanroom_id,
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
            run_dir=str(result.run_dir),
            plan_path=str(result.plan_path),
            signal=result.signal,
            stdout_truncated=result.stdout_truncated,
            stderr_truncated=result.stderr_truncated,
        )


class TerminateResponse(BaseModel):
    """Terminate always reports ``true`` (it is idempotent for launched ids)."""

    model_config = _RESPONSE

    terminated: Literal[True] = True


class CleanroomModel(BaseModel):
    """A live context as listed by ``GET /v1/cleanrooms``."""

    model_config = _RESPONSE

    cleanroom_id: str
    backend: str
    cwd: str
    policy_source: str
    policy_hash: str
    run_dir_root: str
    read_only_workspace: bool
    created_at: str
    runs: list[str]

    @classmethod
    def of(cls, info: CleanroomInfo) -> CleanroomModel:
        """Build from the service value."""
        return cls(
            cleanroom_id=info.cleanroom_id,
            backend=info.backend,
            cwd=str(info.cwd),
            policy_source=str(info.policy_source),
            policy_hash=info.policy_hash,
            run_dir_root=str(info.run_dir_root),
            read_only_workspace=info.read_only_workspace,
            created_at=info.created_at,
            runs=list(info.runs),
        )


class CleanroomsResponse(BaseModel):
    """``GET /v1/cleanrooms``: the live contexts, oldest first."""

    model_config = _RESPONSE

    cleanrooms: list[CleanroomModel]


class DoctorCheckModel(BaseModel):
    """One readiness check."""

    model_config = _RESPONSE

    name: str
    status: Literal["pass", "warn", "fail"]
    reason: str
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, check: DoctorCheck) -> DoctorCheckModel:
        """Build from the service value."""
        return cls(name=check.name, status=check.status, reason=check.reason, details=check.details)


class DoctorResponse(BaseModel):
    """``GET /v1/doctor``: ``ok`` is false when any check failed."""

    model_config = _RESPONSE

    ok: bool
    checks: list[DoctorCheckModel]


class HealthResponse(BaseModel):
    """``GET /healthz``."""

    model_config = _RESPONSE

    ok: Literal[True] = True
    version: str


class ErrorDetail(BaseModel):
    """A stable ``code`` (see the error tree), a human message, structured details."""

    model_config = _RESPONSE

    code: str
    message: str
    details: dict[str, Any]


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "message", "details"}}``."""

    model_config = _RESPONSE

    error: ErrorDetail
