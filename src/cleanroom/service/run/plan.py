"""What the service decided for one run."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.config_limits import LimitsConfig
from cleanroom.images.userimage import UserImage
from cleanroom.models import SandboxResources
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
    image: UserImage | None = None
    """The user image the command runs in (None: the built-in image)."""
    vcpus: int | None = None
    """The guest's vCPUs (None: the backend's config)."""
    memory_mib: int | None = None
    """The guest's memory (None: the backend's config)."""
    disk_mib: int | None = None
    """Each writable disk's size (None: the backend's default)."""
    machine: SandboxResources | None = None
    """The guest's size as the context reports it (defaults filled in), for the record."""

    @property
    def default_machine(self) -> bool:
        """Whether the guest is the backend's default size (as pooled guests are)."""
        return self.vcpus is None and self.memory_mib is None and self.disk_mib is None

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
