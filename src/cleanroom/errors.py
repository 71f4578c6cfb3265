"""The cleanroom error tree.

Every error carries a stable snake_case ``code`` (used in API bodies, CLI output
and audit events), an HTTP ``status`` and a CLI ``exit_code``. Callers map
errors by class or by ``code``, never by message text.

::

    CleanroomError                 internal_error               500  70
    ├── InvalidRequest             invalid_request              400  64
    ├── ConfigInvalid              config_invalid               400  78
    ├── PolicyError
    │   ├── PolicyInvalid          policy_invalid               422  65
    │   ├── PolicyConflict         policy_conflict              409  65
    │   └── PolicyNotFound         policy_not_found             404  66
    ├── NotFound
    │   ├── CleanroomNotFound      cleanroom_not_found          404  66
    │   └── RunNotFound            run_not_found                404  66
    ├── BackendError
    │   ├── BackendUnavailable     backend_unavailable          503  69
    │   ├── BackendCapabilityMismatch backend_capability_mismatch 409 69
    │   └── RuntimeLaunchFailed    runtime_launch_failed        502  70
    ├── ImageUnavailable           image_unavailable            503  69
    ├── RunTimeout                 run_timeout                  504 124
    ├── RunCancelled               run_cancelled                409 130
    ├── OutputLimitExceeded        output_limit                 413  73
    ├── WorkspaceTooLarge          workspace_too_large          413  65
    ├── WorkspaceInvalid           workspace_invalid            400  65
    ├── UploadTimeout              upload_timeout               408  75
    ├── CapacityExhausted          capacity_exhausted           503  75
    ├── GuestAgentFailed           guest_agent_failed           502  70
    ├── NetworkSetupFailed         network_setup_failed         502  70
    ├── HostNotAllowed             host_not_allowed             403  77
    ├── WorkspaceConflict          workspace_conflict           409  65
    ├── Unauthenticated            unauthenticated              401  77
    │   └── TokenInvalid           token_invalid                401  77
    └── ServerUnavailable          server_unavailable           503  69
        └── ServerNotTrusted       server_not_trusted           503  69
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BackendCapabilityMismatch",
    "BackendError",
    "BackendUnavailable",
    "CapacityExhausted",
    "CleanroomError",
    "CleanroomNotFound",
    "ConfigInvalid",
    "GuestAgentFailed",
    "HostNotAllowed",
    "ImageUnavailable",
    "InvalidRequest",
    "NetworkSetupFailed",
    "NotFound",
    "OutputLimitExceeded",
    "PolicyConflict",
    "PolicyError",
    "PolicyInvalid",
    "PolicyNotFound",
    "RunCancelled",
    "RunNotFound",
    "RunTimeout",
    "RuntimeLaunchFailed",
    "ServerNotTrusted",
    "ServerUnavailable",
    "TokenInvalid",
    "Unauthenticated",
    "UploadTimeout",
    "WorkspaceConflict",
    "WorkspaceInvalid",
    "WorkspaceTooLarge",
    "error_class_for_code",
]


class CleanroomError(Exception):
    """An unexpected internal failure (the base of every cleanroom error)."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 70

    def __init_subclass__(
        cls, *, code: str | None = None, status: int | None = None, exit_code: int | None = None
    ) -> None:
        """``class X(Parent, code=..., status=..., exit_code=...)``: what is not given is
        inherited."""
        super().__init_subclass__()
        if code is not None:
            cls.code = code
        if status is not None:
            cls.status = status
        if exit_code is not None:
            cls.exit_code = exit_code

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        """The API error body: ``{"error": {"code", "message", "details"}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def http_headers(self) -> dict[str, str]:
        """Extra HTTP response headers this error asks for (none by default)."""
        return {}


class InvalidRequest(CleanroomError, code="invalid_request", status=400, exit_code=64):
    """A request was malformed, mistyped, or named something that cannot exist."""


class ConfigInvalid(CleanroomError, code="config_invalid", status=400, exit_code=78):
    """The runtime configuration file is invalid."""


class PolicyError(CleanroomError, code="policy_invalid", status=422, exit_code=65):
    """Base of the policy errors."""


class PolicyInvalid(PolicyError, code="policy_invalid"):
    """The policy file failed to parse or validate; ``details['problems']`` lists every problem."""


class PolicyConflict(PolicyError, code="policy_conflict", status=409):
    """The policy contradicts itself or the request in a way that cannot be resolved."""


class PolicyNotFound(PolicyError, code="policy_not_found", status=404, exit_code=66):
    """Neither ``cleanroom.yaml`` nor ``.buildkite/cleanroom.yaml`` exists in the directory."""


class NotFound(CleanroomError, code="not_found", status=404, exit_code=66):
    """Base of the lookup failures."""


class CleanroomNotFound(NotFound, code="cleanroom_not_found"):
    """No cleanroom context has that id (or it was terminated)."""


class RunNotFound(NotFound, code="run_not_found"):
    """No run has that id."""


class BackendError(CleanroomError, code="backend_unavailable", status=503, exit_code=69):
    """Base of the backend failures."""


class BackendUnavailable(BackendError, code="backend_unavailable"):
    """The requested backend cannot run on this host (details say what is missing)."""


class BackendCapabilityMismatch(BackendError, code="backend_capability_mismatch", status=409):
    """The backend cannot enforce something the compiled policy requires."""


class RuntimeLaunchFailed(BackendError, code="runtime_launch_failed", status=502, exit_code=70):
    """The guest did not start or did not become ready in time."""


class ImageUnavailable(CleanroomError, code="image_unavailable", status=503, exit_code=69):
    """The guest image is missing, corrupt, or cannot be built here."""


class RunTimeout(CleanroomError, code="run_timeout", status=504, exit_code=124):
    """The command did not finish within its timeout and was killed."""


class RunCancelled(CleanroomError, code="run_cancelled", status=409, exit_code=130):
    """The run was cancelled (by the client, a terminate, or server shutdown)."""


class OutputLimitExceeded(CleanroomError, code="output_limit", status=413, exit_code=73):
    """The command wrote more to stdout or stderr than ``limits.output_log_bytes``;
    it was killed. The logs hold the output up to the limit."""


class WorkspaceTooLarge(CleanroomError, code="workspace_too_large", status=413, exit_code=65):
    """The workspace is larger than ``limits.workspace_bytes`` (allocated) or
    ``limits.workspace_apparent_bytes`` (apparent); nothing was copied."""


class WorkspaceInvalid(CleanroomError, code="workspace_invalid", status=400, exit_code=65):
    """An uploaded workspace archive is malformed or unsafe (a path leaving the tree,
    a device node, too many members, ...) or names no live upload; nothing of it is used."""


class UploadTimeout(CleanroomError, code="upload_timeout", status=408, exit_code=75):
    """An upload was too slow: it did not finish within ``limits.upload_timeout_seconds``,
    or ``limits.upload_min_bytes`` took longer than ``limits.upload_window_seconds`` to
    arrive. Nothing of it is kept; the server closes the connection."""

    def http_headers(self) -> dict[str, str]:
        """``Connection: close``: the rest of the body is not read (RFC 9110, 408)."""
        return {"Connection": "close"}


class CapacityExhausted(CleanroomError, code="capacity_exhausted", status=503, exit_code=75):
    """The server already runs ``limits.max_concurrent_runs`` runs; retry later
    (``details['retry_after']`` seconds, also the HTTP ``Retry-After`` header)."""

    def http_headers(self) -> dict[str, str]:
        """``Retry-After``: whole seconds from ``details['retry_after']``."""
        return {"Retry-After": str(max(1, round(float(self.details.get("retry_after", 1)))))}


class GuestAgentFailed(CleanroomError, code="guest_agent_failed", status=502, exit_code=70):
    """The guest agent broke the protocol, reported an error, or went away."""


class NetworkSetupFailed(CleanroomError, code="network_setup_failed", status=502, exit_code=70):
    """The run's network namespace, TAP device, firewall or resolver could not be set up."""


class HostNotAllowed(CleanroomError, code="host_not_allowed", status=403, exit_code=77):
    """The destination is not allowed by the policy."""


class WorkspaceConflict(CleanroomError, code="workspace_conflict", status=409, exit_code=65):
    """A host file the run changed was itself modified since the workspace was copied;
    nothing was applied. ``details['paths']`` lists (some of) the conflicting paths."""


class Unauthenticated(CleanroomError, code="unauthenticated", status=401, exit_code=77):
    """A TCP listener was asked without credentials (``Authorization: Bearer <token>``).

    Answered with ``WWW-Authenticate: Bearer``; the unix socket needs no token."""

    def http_headers(self) -> dict[str, str]:
        """``WWW-Authenticate``: the scheme the server expects (RFC 6750)."""
        return {"WWW-Authenticate": 'Bearer realm="cleanroom"'}


class TokenInvalid(Unauthenticated, code="token_invalid"):
    """The bearer token is malformed, unknown or revoked (401, as RFC 6750's
    ``invalid_token``: the remedy is another token, not another permission)."""

    def http_headers(self) -> dict[str, str]:
        """``WWW-Authenticate`` with ``error="invalid_token"``."""
        return {"WWW-Authenticate": 'Bearer realm="cleanroom", error="invalid_token"'}


class ServerUnavailable(CleanroomError, code="server_unavailable", status=503, exit_code=69):
    """No cleanroom server answers at the requested address."""


class ServerNotTrusted(ServerUnavailable, code="server_not_trusted"):
    """The server's TLS certificate does not match the pinned fingerprint or does
    not verify against the CA file (raised by the client; nothing was sent)."""


def _all_subclasses(cls: type[CleanroomError]) -> list[type[CleanroomError]]:
    out: list[type[CleanroomError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_class_for_code(code: str) -> type[CleanroomError]:
    """The most specific error class carrying ``code`` (``CleanroomError`` if unknown).

    Used by the client to raise the same class the server raised. Only the
    classes of this module count: a private subclass elsewhere (which may carry
    a public code) is never what a client should raise.
    """
    best: type[CleanroomError] = CleanroomError
    for cls in _all_subclasses(CleanroomError):
        if cls.code == code and cls.__module__ == __name__:
            best = cls  # later entries are deeper in the tree, hence more specific
    return best
