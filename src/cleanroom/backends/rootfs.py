"""Per-run writable rootfs seeded from the read-only base image.

Each run gets its own disk so writes are discarded with the run. Methods, in
the order a backend lists them (the first one that works on this host wins):

- ``reflink``: a FICLONE clone (copy-on-write extents; XFS, btrfs; ~5 ms);
- ``qcow2-overlay``: a qcow2 file whose backing file is the base (QEMU only;
  ``qemu-img create``, ~20 ms; the base is opened read-only by QEMU);
- ``copy``: a sparse copy (data extents only, via ``copy_file_range``).

The base image is never opened for writing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cleanroom.errors import RuntimeLaunchFailed

__all__ = [
    "RootfsCopy",
    "RootfsMethod",
    "RootfsUnsupported",
    "prepare_rootfs",
    "qcow2_overlay",
    "reflink_copy",
    "remove_rootfs",
    "sparse_copy",
]

RootfsMethod = Literal["reflink", "qcow2-overlay", "copy"]

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h

# errno values meaning "this filesystem (pair) cannot clone", not "something broke".
_NO_CLONE = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}


class RootfsUnsupported(Exception):
    """A method cannot work on this host or filesystem; the next method is tried."""


@dataclass(frozen=True)
class RootfsCopy:
    """One run's disk: where it is, how it was made, what format the VMM must open."""

    path: Path
    method: RootfsMethod
    format: Literal["raw", "qcow2"]
    prepare_ms: float


def reflink_copy(base: Path, dest: Path) -> None:
    """Clone ``base`` to ``dest`` with FICLONE; ``RootfsUnsupported`` if the fs cannot."""
    src_fd = os.open(base, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.ioctl(dst_fd, FICLONE, src_fd)
        except OSError as exc:
            os.close(dst_fd)
            dst_fd = -1
            dest.unlink(missing_ok=True)
            if exc.errno in _NO_CLONE:
                raise RootfsUnsupported(f"reflink: {os.strerror(exc.errno)}") from exc
            raise
        finally:
            if dst_fd >= 0:
                os.close(dst_fd)
    finally:
        os.close(src_fd)


def sparse_copy(base: Path, dest: Path) -> None:
    """Copy ``base`` to ``dest`` writing only its data extents (holes stay holes)."""
    src_fd = os.open(base, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src_fd).st_size
        dst_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(dst_fd, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(src_fd, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole remains
                        break
                    raise
                end = os.lseek(src_fd, start, os.SEEK_HOLE)
                pos = start
                while pos < end:
                    copied = os.copy_file_range(src_fd, dst_fd, end - pos, pos, pos)
                    if copied == 0:
                        raise OSError(errno.EIO, f"short copy of {base} at {pos}")
                    pos += copied
                offset = end
        finally:
            os.close(dst_fd)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        os.close(src_fd)


def qcow2_overlay(base: Path, dest: Path, qemu_img: str = "qemu-img") -> None:
    """Create a qcow2 overlay at ``dest`` backed by the raw ``base``."""
    try:
        done = subprocess.run(
            [qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(dest)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except FileNotFoundError as exc:
        raise RootfsUnsupported(f"qcow2-overlay: {qemu_img} not found") from exc
    except subprocess.TimeoutExpired as exc:
        dest.unlink(missing_ok=True)
        raise OSError(errno.ETIMEDOUT, f"{qemu_img} create timed out") from exc
    if done.returncode != 0:
        dest.unlink(missing_ok=True)
        raise OSError(errno.EIO, f"{qemu_img} create failed: {done.stderr.strip()}")


def prepare_rootfs(
    base: Path, run_dir: Path, methods: Sequence[RootfsMethod], *, qemu_img: str = "qemu-img"
) -> RootfsCopy:
    """Make ``run_dir``'s private disk from ``base`` with the first method that works.

    Raises ``RuntimeLaunchFailed`` (details: ``attempts``) if none does.
    """
    attempts: dict[str, str] = {}
    for method in methods:
        fmt: Literal["raw", "qcow2"] = "qcow2" if method == "qcow2-overlay" else "raw"
        dest = run_dir / f"rootfs.{fmt}"
        dest.unlink(missing_ok=True)
        started = time.perf_counter()
        try:
            if method == "reflink":
                reflink_copy(base, dest)
            elif method == "qcow2-overlay":
                qcow2_overlay(base, dest, qemu_img)
            else:
                sparse_copy(base, dest)
        except RootfsUnsupported as exc:
            attempts[method] = str(exc)
            continue
        except OSError as exc:
            attempts[method] = f"{type(exc).__name__}: {exc}"
            continue
        elapsed = (time.perf_counter() - started) * 1000
        return RootfsCopy(path=dest, method=method, format=fmt, prepare_ms=round(elapsed, 3))
    raise RuntimeLaunchFailed(
        f"could not prepare a per-run rootfs from {base}",
        details={"attempts": attempts, "base": str(base)},
    )


def remove_rootfs(run_dir: Path) -> None:
    """Remove any per-run disk in ``run_dir`` (idempotent)."""
    for name in ("rootfs.raw", "rootfs.qcow2"):
        (run_dir / name).unlink(missing_ok=True)
