"""The per-run writable disks: the workspace disk the guest mounts at /workspace and,
when the run uses a user image, the scratch disk holding the image's writable layer.

The workspace does not live on the root filesystem, whose base image is kept
small (its free space would cap the repository size); it gets its own sparse
disk, made fresh for every run and deleted with it. ``mkfs.ext4`` on a sparse
file writes only metadata (a few MiB; 10-30 ms here) and the guest mounts it
with ``noinit_itable`` so nothing zeroes the rest. The guest agent finds the
disk by its filesystem label, which works whatever order the VMM enumerates
its block devices in.

The scratch disk is made the same way (label :data:`SCRATCH_LABEL`); its root
holds only ``image.json``, the image's ``Env``/``User``/``WorkingDir``
(``ImageConfig.to_dict()``), which the guest agent reads at boot before it lays
an overlay's ``upper``/``work`` directories beside it. The host never reads
either disk back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.images.userimage import ImageConfig

__all__ = [
    "DEFAULT_WORKSPACE_DISK_BYTES",
    "SCRATCH_DISK_NAME",
    "SCRATCH_LABEL",
    "SCRATCH_SETTINGS_NAME",
    "WORKSPACE_DISK_NAME",
    "WORKSPACE_LABEL",
    "ScratchDisk",
    "WorkspaceDisk",
    "convert_disk",
    "copy_scratch_disk",
    "create_blank_workspace_disk",
    "create_scratch_disk",
    "create_workspace_disk",
    "fill_workspace_disk",
    "remove_scratch_disk",
    "remove_workspace_disk",
]

WORKSPACE_LABEL = "cleanroom-ws"
"""The ext4 volume label the guest agent looks for (at most 16 bytes)."""
WORKSPACE_DISK_NAME = "workspace.ext4"
DEFAULT_WORKSPACE_DISK_BYTES = 16 << 30
"""Virtual size of each writable disk; only what the run writes takes space on the host."""
SCRATCH_LABEL = "cleanroom-upper"
"""The scratch disk's ext4 label (at most 16 bytes; ``cleanroom.agent.imageroot.SCRATCH_LABEL``)."""
SCRATCH_DISK_NAME = "scratch.ext4"
SCRATCH_SETTINGS_NAME = "image.json"
"""The image settings file at the scratch disk's root (read by the guest agent)."""
_MKFS_MIN_BYTES = 8 << 20


@dataclass(frozen=True)
class WorkspaceDisk:
    """One run's workspace disk."""

    path: Path
    size_bytes: int
    prepare_ms: float
    seeded: bool
    """Whether the disk holds a copy of the workspace (else it is empty)."""


@dataclass(frozen=True)
class ScratchDisk:
    """One run's scratch disk (the user image's writable layer)."""

    path: Path
    size_bytes: int
    prepare_ms: float


def _make_ext4(
    path: Path,
    size_bytes: int,
    label: str,
    seed: Path | None,
    *,
    what: str,
    after: Sequence[str] = (),
    in_place: bool = False,
) -> None:
    """A sparse ext4 at ``path`` holding a copy of ``seed``, then ``after PATH`` run on
    it; removed again on failure, which raises ``RuntimeLaunchFailed``.

    ``in_place``: ``path`` exists (a blank file of ``size_bytes`` a VMM already has
    open): the filesystem is written into that same file, never truncated."""
    if size_bytes < _MKFS_MIN_BYTES:
        raise RuntimeLaunchFailed(
            f"a {what} disk of {size_bytes} bytes is too small",
            details={"path": str(path), "minimum_bytes": _MKFS_MIN_BYTES},
        )
    argv = ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0"]
    argv += ["-E", "lazy_itable_init=1,root_owner=0:0", "-L", label]
    argv += ["-d", str(seed)] if seed is not None else []
    try:
        if not in_place:
            with path.open("wb") as fh:
                fh.truncate(size_bytes)
        commands = [[*argv, str(path)]]
        if after:
            commands.append([*after, str(path)])
        for cmd in commands:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        path.unlink(missing_ok=True)
        stderr = getattr(exc, "stderr", None) or ""
        raise RuntimeLaunchFailed(
            f"could not create the {what} disk: {exc}",
            details={"path": str(path), "stderr": stderr.strip()[-500:]},
        ) from exc


def create_scratch_disk(
    run_dir: Path, config: ImageConfig, size_bytes: int = DEFAULT_WORKSPACE_DISK_BYTES
) -> ScratchDisk:
    """Create ``run_dir/scratch.ext4``: a sparse ext4 labelled :data:`SCRATCH_LABEL`
    holding only :data:`SCRATCH_SETTINGS_NAME` (``config``). Raises
    ``RuntimeLaunchFailed`` (and leaves no file) when it cannot be made."""
    started = time.monotonic()
    path = run_dir / SCRATCH_DISK_NAME
    seed = run_dir / "scratch-seed"
    try:
        seed.mkdir()
        (seed / SCRATCH_SETTINGS_NAME).write_text(json.dumps(config.to_dict()))
    except OSError as exc:
        shutil.rmtree(seed, ignore_errors=True)
        raise RuntimeLaunchFailed(f"could not write the image settings: {exc}") from exc
    try:
        _make_ext4(path, size_bytes, SCRATCH_LABEL, seed, what="scratch")
    finally:
        shutil.rmtree(seed, ignore_errors=True)
    return ScratchDisk(path, size_bytes, round((time.monotonic() - started) * 1000, 3))


def convert_disk(source: Path, dest: Path, fmt: str, qemu_img: str, *, what: str) -> None:
    """``qemu-img convert`` ``source`` (``raw`` or ``qcow2``, the other one at ``dest``):
    only allocated clusters are written, so a sparse disk stays sparse. Raises
    ``RuntimeLaunchFailed`` (and leaves no ``dest``)."""
    src_fmt = "qcow2" if fmt == "raw" else "raw"
    argv = [qemu_img, "convert", "-q", "-f", src_fmt, "-O", fmt, str(source), str(dest)]
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        dest.unlink(missing_ok=True)
        stderr = getattr(exc, "stderr", None) or ""
        raise RuntimeLaunchFailed(
            f"could not copy the {what}: {exc}", details={"stderr": stderr.strip()[-500:]}
        ) from exc


def copy_scratch_disk(run_dir: Path, base: Path, qemu_img: str = "qemu-img") -> ScratchDisk:
    """Make ``run_dir/scratch.ext4`` a raw copy of ``base``, a snapshot's saved scratch
    disk (qcow2, compact): a guest restored from that snapshot has the filesystem
    mounted and must find it exactly as it was. Raises ``RuntimeLaunchFailed``."""
    started = time.monotonic()
    path = run_dir / SCRATCH_DISK_NAME
    convert_disk(base, path, "raw", qemu_img, what="snapshot's scratch disk")
    size = path.stat().st_size
    return ScratchDisk(path, size, round((time.monotonic() - started) * 1000, 3))


def remove_scratch_disk(run_dir: Path) -> None:
    """Delete the run's scratch disk if it exists."""
    (run_dir / SCRATCH_DISK_NAME).unlink(missing_ok=True)


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
    # lost+found would show up in the user's /workspace.
    _make_ext4(
        path,
        size_bytes,
        WORKSPACE_LABEL,
        source,
        what="workspace",
        after=("debugfs", "-w", "-R", "rmdir /lost+found"),
    )
    ms = round((time.monotonic() - started) * 1000, 3)
    return WorkspaceDisk(path, size_bytes, ms, seeded=source is not None)


def create_blank_workspace_disk(
    run_dir: Path, size_bytes: int = DEFAULT_WORKSPACE_DISK_BYTES
) -> WorkspaceDisk:
    """Create ``run_dir/workspace.ext4`` as a blank sparse file (no filesystem yet) for
    a VMM to open now; :func:`fill_workspace_disk` writes the workspace into it
    later, in place. The guest must not read it before then, and must drop any
    blocks of that device it cached earlier (a restored guest's agent does both).
    Raises ``RuntimeLaunchFailed``."""
    path = run_dir / WORKSPACE_DISK_NAME
    try:
        with path.open("wb") as fh:
            fh.truncate(size_bytes)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise RuntimeLaunchFailed(f"could not create the workspace disk: {exc}") from exc
    return WorkspaceDisk(path, size_bytes, 0.0, seeded=True)


def fill_workspace_disk(disk: WorkspaceDisk, source: Path) -> float:
    """Write the workspace filesystem holding a copy of ``source`` into the blank
    ``disk`` (see :func:`create_blank_workspace_disk`), as
    :func:`create_workspace_disk` would make it; the milliseconds it took.
    Raises ``RuntimeLaunchFailed``."""
    started = time.monotonic()
    _make_ext4(
        disk.path,
        disk.size_bytes,
        WORKSPACE_LABEL,
        source,
        what="workspace",
        after=("debugfs", "-w", "-R", "rmdir /lost+found"),
        in_place=True,
    )
    return round((time.monotonic() - started) * 1000, 3)


def remove_workspace_disk(run_dir: Path) -> None:
    """Delete the run's workspace disk if it exists."""
    (run_dir / WORKSPACE_DISK_NAME).unlink(missing_ok=True)
