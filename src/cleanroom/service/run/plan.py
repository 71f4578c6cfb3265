"""What the service decided for one run."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.config_limits import LimitsConfig
from cleanroom.policy import CompiledPolicy
from cleanroom.service.terminal import Terminal

__all__ = ["Defer", "RunPlan"]


@dataclass(frozen=True)
class RunPlan:
    """What the service decided for one run."""

    run_id: str
    cleanroom_id: str
    backend_name: str
    command: tuple[str, ...]
    cwd: Path
    run_dir: Path
    policy: CompiledPolicy
    read_only_workspace: bool
    launch_seconds: float
    timeout: float | None = None
    env: Mapping[str, str] | None = field(default=None, repr=False)
    """The command's environment (values are secrets: never recorded or logged)."""
    stdin: bytes | None = field(default=None, repr=False)
    """The command's standard input (None: empty)."""
    artifacts: tuple[str, ...] = ()
    """Globs of workspace files to copy out after the command."""
    terminal: Terminal | None = field(default=None, repr=False, compare=False)
    """Run on a pseudo-terminal fed by this (``stdin`` is then unused)."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """The runtime config's caps (output and console log bytes, workspace size)."""


Defer = Callable[[str, Coroutine[None, None, None]], None]
"""Takes a finished run's finalizer (by run id) to run in the background."""
