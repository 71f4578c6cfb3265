"""Per-run rootfs: each method yields a private disk; the base is never written."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cleanroom.backends.rootfs import (
    RootfsUnsupported,
    prepare_rootfs,
    reflink_copy,
    remove_rootfs,
    sparse_copy,
)
from cleanroom.errors import RuntimeLaunchFailed

MIB = 1 << 20


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A 16 MiB sparse file with data at its start, middle and end."""
    path = tmp_path / "base.img"
    with path.open("wb") as fh:
        fh.truncate(16 * MIB)
        for offset in (0, 7 * MIB + 123, 16 * MIB - 4096):
            fh.seek(offset)
            fh.write(os.urandom(4096))
    path.chmod(0o444)
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


def test_sparse_copy_is_identical_and_sparse(base: Path, run_dir: Path) -> None:
    dest = run_dir / "copy.raw"
    sparse_copy(base, dest)
    assert _sha(dest) == _sha(base)
    assert dest.stat().st_size == base.stat().st_size
    assert dest.stat().st_blocks * 512 < 2 * MIB  # holes stayed holes


def test_copy_is_private(base: Path, run_dir: Path) -> None:
    before = _sha(base)
    disk = prepare_rootfs(base, run_dir, ["copy"])
    assert (disk.method, disk.format, disk.path) == ("copy", "raw", run_dir / "rootfs.raw")
    assert disk.prepare_ms >= 0
    with disk.path.open("r+b") as fh:
        fh.write(b"guest wrote this")
    assert _sha(base) == before
    remove_rootfs(run_dir)
    assert list(run_dir.iterdir()) == []


def test_reflink_or_unsupported(base: Path, run_dir: Path) -> None:
    dest = run_dir / "clone.raw"
    try:
        reflink_copy(base, dest)
    except RootfsUnsupported:
        assert not dest.exists()  # nothing half-made left behind
    else:
        assert _sha(dest) == _sha(base)


def test_falls_through_to_a_working_method(base: Path, run_dir: Path) -> None:
    disk = prepare_rootfs(base, run_dir, ["reflink", "copy"])
    assert disk.method in ("reflink", "copy")
    assert _sha(disk.path) == _sha(base)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_qcow2_overlay_reads_base_and_keeps_writes(base: Path, run_dir: Path) -> None:
    before = _sha(base)
    disk = prepare_rootfs(base, run_dir, ["qcow2-overlay"])
    assert (disk.method, disk.format) == ("qcow2-overlay", "qcow2")
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(disk.path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(base) in info
    # Write through the overlay with qemu-io, read the base back unchanged.
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(disk.path)],
        capture_output=True,
        check=True,
    )
    assert _sha(base) == before
    remove_rootfs(run_dir)
    assert not disk.path.exists()


def test_no_method_works(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(RuntimeLaunchFailed) as info:
        prepare_rootfs(tmp_path / "missing.img", run_dir, ["copy"])
    assert "copy" in info.value.details["attempts"]
    assert list(run_dir.iterdir()) == []


def test_missing_qemu_img_is_unsupported(base: Path, run_dir: Path) -> None:
    with pytest.raises(RuntimeLaunchFailed) as info:
        prepare_rootfs(base, run_dir, ["qcow2-overlay"], qemu_img="/nonexistent/qemu-img")
    assert "not found" in info.value.details["attempts"]["qcow2-overlay"]
