"""The per-run workspace disk: an empty ext4 filesystem the guest mounts at /workspace.

The workspace does not live on the root filesystem, whose base image is kept
small (its free space would cap the repository size); it gets its own sparse
disk, made fresh for every run and deleted with it. ``mkfs.ext4`` on a sparse
file writes only metadata (a few MiB; 10-30 ms here) and the guest mounts it
with ``noinit_itable`` so nothing zeroes the rest. The guest agent finds the
disk by its filesystem label, which works whatever order the VMM enumerates
its block devices in.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cleanroom.errors import RuntimeLaunchFailed

__all__ = [
    "DEFAULT_WORKSPACE_DISK_BYTES",
    "WORKSPACE_DISK_NAME",
    "WORKSPACE_LABEL",
    "WorkspaceDisk",
    "create_workspace_disk",
    "remove_workspace_disk",
]

WORKSPACE_LABEL = "cleanroom-ws"
"""The ext4 volume label the guest agent looks for (at most 16 bytes)."""
WORKSPACE_DISK_NAME = "workspace.ext4"
DEFAULT_WORKSPACE_DISK_BYTES = 16 << 30
"""Virtual size; only what the run writes takes space on the host."""


@dataclass(frozen=True)
class WorkspaceDisk:
    """One run's workspace disk."""

    path: Path
    size_bytes: int
    prepare_ms: float
    seeded: bool
    """Whether the disk holds a copy of the workspace (else it is empty)."""


def create_workspace_disk(
    run_dir: Path,
    source: Path | None = None,
    size_bytes: int = DEFAULT_WORKSPACE_DISK_BYTES,
) -> WorkspaceDisk:
    """Create ``run_dir/workspace.ext4``: a sparse ext4 labelled :data:`WORKSPACE_LABEL`,
    holding a copy of ``source`` when given (``mkfs.ext4 -d``: symlinks stay
    links, nothing outside the tree is read), else empty.

    Copying on the host at disk speed is far faster than streaming through the
    guest agent under emulation (100 MiB: ~0.3 s here versus ~20 s). Raises
    ``RuntimeLaunchFailed`` (and leaves no file) when it cannot be made.
    """
    path = run_dir / WORKSPACE_DISK_NAME
    started = time.monotonic()
    seed = ["-d", str(source)] if source is not None else []
    try:
        with path.open("wb") as fh:
            fh.truncate(size_bytes)
        for argv in (
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,root_owner=0:0",
                "-L",
                WORKSPACE_LABEL,
                *seed,
                str(path),
            ],
            # lost+found would show up in the user's /workspace.
            ["debugfs", "-w", "-R", "rmdir /lost+found", str(path)],
        ):
            subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        path.unlink(missing_ok=True)
        stderr = getattr(exc, "stderr", None) or ""
        raise RuntimeLaunchFailed(
            f"could not create the workspace disk: {exc}",
            details={"path": str(path), "stderr": stderr.strip()[-500:]},
        ) from exc
    ms = round((time.monotonic() - started) * 1000, 3)
    return WorkspaceDisk(path, size_bytes, ms, seeded=source is not None)


def remove_workspace_disk(run_dir: Path) -> None:
    """Delete the run's workspace disk if it exists."""
    (run_dir / WORKSPACE_DISK_NAME).unlink(missing_ok=True)
