"""The per-run writable disks: made on the host, found by the guest agent by their labels."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cleanroom.agent.imageroot import SCRATCH_LABEL as AGENT_SCRATCH_LABEL
from cleanroom.agent.imageroot import parse_settings
from cleanroom.agent.sysops import WORKSPACE_LABEL, find_labelled_disk
from cleanroom.backends.workspace_disk import (
    SCRATCH_DISK_NAME,
    SCRATCH_SETTINGS_NAME,
    WORKSPACE_DISK_NAME,
    create_blank_workspace_disk,
    create_scratch_disk,
    create_workspace_disk,
    fill_workspace_disk,
    remove_scratch_disk,
    remove_workspace_disk,
)
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.images.userimage import ImageConfig


def _ls(image: Path, path: str) -> str:
    out = subprocess.run(
        ["debugfs", "-R", f"ls -l {path}", str(image)], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_seeded_disk_holds_the_tree_and_no_lost_found(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("hello")
    (src / "link").symlink_to("/etc/passwd")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    disk = create_workspace_disk(run_dir, src, size_bytes=256 << 20)
    assert disk.seeded
    assert disk.path == run_dir / WORKSPACE_DISK_NAME
    assert disk.path.stat().st_size == 256 << 20
    assert disk.path.stat().st_blocks * 512 < 32 << 20  # sparse
    root = _ls(disk.path, "/")
    assert "sub" in root
    assert "link" in root
    assert "lost+found" not in root
    cat = subprocess.run(
        ["debugfs", "-R", "cat /sub/f.txt", str(disk.path)], capture_output=True, check=True
    )
    assert cat.stdout == b"hello"
    label = subprocess.run(
        ["e2label", str(disk.path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert label.encode() == WORKSPACE_LABEL
    remove_workspace_disk(run_dir)
    assert not disk.path.exists()


def test_empty_disk_and_failure_leaves_nothing(tmp_path: Path) -> None:
    disk = create_workspace_disk(tmp_path, None, size_bytes=64 << 20)
    assert not disk.seeded
    assert "lost+found" not in _ls(disk.path, "/")
    with pytest.raises(RuntimeLaunchFailed):
        create_workspace_disk(tmp_path / "missing", None)
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(RuntimeLaunchFailed):
        create_workspace_disk(bad, tmp_path / "no-such-source", size_bytes=64 << 20)
    assert not (bad / WORKSPACE_DISK_NAME).exists()


def test_agent_finds_the_disk_by_label(tmp_path: Path) -> None:
    sys_block = tmp_path / "sys"
    dev = tmp_path / "dev"
    for d in (sys_block / "vda", sys_block / "vdb", sys_block / "loop0", dev):
        d.mkdir(parents=True)
    (dev / "vda").write_bytes(bytes(4096))  # no ext superblock
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    disk = create_workspace_disk(run_dir, None, size_bytes=64 << 20)
    (dev / "vdb").symlink_to(disk.path)
    assert find_labelled_disk(WORKSPACE_LABEL, str(sys_block), str(dev)) == str(dev / "vdb")
    assert find_labelled_disk(b"other", str(sys_block), str(dev)) is None


def test_scratch_disk_carries_the_image_settings_for_the_agent(tmp_path: Path) -> None:
    config = ImageConfig(env=(("PATH", "/opt/bin:/bin"),), user="app:staff", working_dir="/src")
    disk = create_scratch_disk(tmp_path, config, size_bytes=4 << 30)
    assert disk.path == tmp_path / SCRATCH_DISK_NAME
    assert disk.path.stat().st_size == 4 << 30
    assert disk.path.stat().st_blocks * 512 < 64 << 20  # sparse: metadata only
    assert not (tmp_path / "scratch-seed").exists()
    label = subprocess.run(
        ["e2label", str(disk.path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert label.encode() == AGENT_SCRATCH_LABEL
    raw = subprocess.run(
        ["debugfs", "-R", f"cat /{SCRATCH_SETTINGS_NAME}", str(disk.path)],
        capture_output=True,
        check=True,
    ).stdout
    settings = parse_settings(raw)  # exactly what the guest agent parses at boot
    assert (settings.env, settings.user, settings.working_dir) == (
        config.env,
        config.user,
        config.working_dir,
    )
    remove_scratch_disk(tmp_path)
    assert not disk.path.exists()
    with pytest.raises(RuntimeLaunchFailed, match="too small"):
        create_scratch_disk(tmp_path, config, size_bytes=1 << 20)
    assert not disk.path.exists()


def test_a_blank_disk_is_filled_in_place(tmp_path: Path) -> None:
    """A VMM opens the blank file first; the filesystem is then written into that
    same file (same inode, same size), never a new one."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("filled")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    disk = create_blank_workspace_disk(run_dir, size_bytes=64 << 20)
    assert disk.seeded
    assert disk.path == run_dir / WORKSPACE_DISK_NAME
    with disk.path.open("rb") as held:  # what the VMM has open
        assert held.read(4096) == bytes(4096)  # no filesystem yet
        ms = fill_workspace_disk(disk, src)
        assert ms > 0
        held.seek(1024 + 56)
        assert held.read(2) == b"\x53\xef"  # ext4 magic, seen through the open file
        assert disk.path.stat().st_ino == os.fstat(held.fileno()).st_ino
    assert disk.path.stat().st_size == 64 << 20
    cat = subprocess.run(
        ["debugfs", "-R", "cat /f.txt", str(disk.path)], capture_output=True, check=True
    )
    assert cat.stdout == b"filled"
    assert "lost+found" not in _ls(disk.path, "/")
