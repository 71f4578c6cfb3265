"""Requests: what a caller asks of the API (each field rule stated once, in ``_fields``)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from cleanroom._fields import Wire, check
from cleanroom._rules import (
    MAX_STDIN_BYTES,
    Absolute,
    Argv,
    Base64,
    Bounds,
    EnvNames,
    Globs,
    NonEmpty,
    NoNul,
)

__all__ = [
    "MAX_LAUNCH_SECONDS",
    "MAX_TIMEOUT_SECONDS",
    "ExecRequest",
    "LaunchOptions",
    "LaunchRequest",
    "RunRequest",
    "TerminateRequest",
    "encode_stdin",
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


class _CommandInputs:
    """What a request that runs a command shares beyond its fields: checking,
    list-to-tuple normalising and the decoded stdin. (The fields stay declared in
    each request, so every request keeps its own field order on the wire.)"""

    command: tuple[str, ...]
    stdin_base64: str | None
    artifacts: tuple[str, ...] | None

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
class RunRequest(_CommandInputs, Wire):
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


@dataclass(frozen=True)
class TerminateRequest(Wire):
    """``POST /v1/cleanrooms/terminate``."""

    cleanroom_id: Id

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class ExecRequest(_CommandInputs, Wire):
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

    @property
    def launch(self) -> LaunchRequest:
        """The launch half of the request."""
        return LaunchRequest(self.cwd, self.backend, self.options, self.workspace_id)
