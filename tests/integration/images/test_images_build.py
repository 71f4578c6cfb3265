"""Tests of real image builds (Debian packages via apt): marked ``image``.

One image for the current inputs is shared across the session (the
``built_image`` fixture, in the user's real cache). Tests of interrupted
builds use a private cache directory.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cleanroom.errors import ImageUnavailable
from cleanroom.images import (
    GuestImage,
    current_image,
    ensure_image,
    image_digest,
    list_images,
    verify_image,
)
from cleanroom.images import builder as builder_module
from cleanroom.images import cache as cache_module
from cleanroom.images.manifest import ARTIFACTS, file_sha256, load_image
from cleanroom.images.recipe import (
    IMAGE_MODULES,
    REQUIRED_MODULES,
    ROOTFS_PACKAGES,
    agent_source_dir,
)
from cleanroom.paths import images_dir

NewcReader = Callable[[bytes], dict[str, tuple[int, bytes]]]

pytestmark = pytest.mark.image


def debugfs(rootfs: Path, request: str) -> str:
    proc = subprocess.run(
        ["debugfs", "-R", request, str(rootfs)], capture_output=True, check=True, text=True
    )
    return proc.stdout


def test_manifest_matches_files_and_lists_packages(built_image: GuestImage) -> None:
    manifest = built_image.manifest
    assert manifest["digest"] == built_image.digest == built_image.path.name
    for role, name in ARTIFACTS.items():
        entry = manifest["artifacts"][role]
        path = built_image.path / name
        assert entry["size"] == path.stat().st_size
        assert entry["sha256"] == file_sha256(path)
    names = {p["name"]: p for p in manifest["packages"]}
    for package in ROOTFS_PACKAGES:
        assert names[package]["version"]
        assert len(names[package]["sha256"]) == 64
    kernel_pkg = f"linux-image-{built_image.kernel_version}"
    assert names[kernel_pkg]["used_for"] == "kernel"
    assert "linux-image-cloud-amd64" in names
    assert manifest["agent_version"] == built_image.agent_version
    assert set(manifest["inputs"]["agent_sources"]) == {
        p.name for p in agent_source_dir().glob("*.py")
    }
    verify_image(built_image)


def test_second_ensure_is_a_cache_hit(
    built_image: GuestImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest_path = built_image.path / "manifest.json"
    before = manifest_path.stat()

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached image must not be rebuilt")

    monkeypatch.setattr(cache_module, "build_artifacts", no_build)
    again = ensure_image()
    assert again.digest == built_image.digest == image_digest()
    after = manifest_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    current = current_image()
    assert current is not None
    assert current.digest == built_image.digest
    assert built_image.digest in {i.digest for i in list_images()}


def test_vmlinux_is_elf_and_bzimage_is_a_linux_kernel(built_image: GuestImage) -> None:
    with built_image.vmlinux.open("rb") as f:
        assert f.read(4) == b"\x7fELF"
    with built_image.kernel.open("rb") as f:
        header = f.read(0x210)
    assert header[0x202:0x206] == b"HdrS"  # the x86 boot protocol signature


def test_initramfs_has_init_busybox_and_modules(
    built_image: GuestImage, read_newc: NewcReader
) -> None:
    data = built_image.initrd.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    entries = read_newc(data)
    mode, init = entries["init"]
    assert mode & 0o111
    assert init.startswith(b"#!/bin/sh")
    assert entries["bin/busybox"][1][:4] == b"\x7fELF"
    assert entries["bin/sh"][1] == b"/bin/busybox"
    assert entries["sbin/switch_root"][1] == b"/bin/busybox"
    for module in (*REQUIRED_MODULES, *IMAGE_MODULES):
        assert entries[f"lib/modules/{module}.ko"][1][:4] == b"\x7fELF", module


def test_rootfs_carries_agent_init_and_bytecode(built_image: GuestImage) -> None:
    rootfs = built_image.rootfs
    listing = debugfs(rootfs, "ls -l /opt/cleanroom/lib/cleanroom/agent")
    for source in agent_source_dir().glob("*.py"):
        assert source.name in listing
    assert "__pycache__" in listing
    pycache = debugfs(rootfs, "ls /opt/cleanroom/lib/cleanroom/agent/__pycache__")
    assert "guest.cpython-311.pyc" in pycache
    assert debugfs(rootfs, "cat /opt/cleanroom/lib/cleanroom/__init__.py") == ""
    init = debugfs(rootfs, "cat /sbin/cleanroom-init")
    assert "PYTHONPATH=/opt/cleanroom/lib" in init
    assert "exec /usr/bin/python3 -u -m cleanroom.agent.guest" in init
    assert "python3.11" in debugfs(rootfs, "stat /usr/bin/python3")
    assert "__init__.cpython-311.pyc" in debugfs(rootfs, "ls /usr/lib/python3.11/json/__pycache__")
    root = debugfs(rootfs, "ls /")
    for name in ("workspace", "proc", "sys", "dev", "run", "tmp", "etc"):
        assert name in root
    assert "root:x:0:0" in debugfs(rootfs, "cat /etc/passwd")


def _linked_copy(image: GuestImage, root: Path) -> GuestImage:
    """A copy of the image whose big files are symlinks and whose initrd is a real copy."""
    copy = root / image.digest
    copy.mkdir()
    for name in (*ARTIFACTS.values(), "manifest.json"):
        if name in ("initrd", "manifest.json"):
            (copy / name).write_bytes((image.path / name).read_bytes())
        else:
            (copy / name).symlink_to(image.path / name)
    return load_image(copy)


def test_verify_catches_flipped_byte_and_missing_file(
    built_image: GuestImage, tmp_path: Path
) -> None:
    copy = _linked_copy(built_image, tmp_path)
    verify_image(copy)
    data = bytearray(copy.initrd.read_bytes())
    data[len(data) // 2] ^= 0x40
    copy.initrd.write_bytes(bytes(data))
    with pytest.raises(ImageUnavailable, match="initrd") as info:
        verify_image(copy)
    assert info.value.details["file"] == str(copy.initrd)
    copy.initrd.write_bytes(built_image.initrd.read_bytes())
    copy.rootfs.unlink()
    with pytest.raises(ImageUnavailable, match=r"rootfs\.ext4 is missing"):
        verify_image(copy)


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty image cache (XDG_CACHE_HOME under tmp_path)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return images_dir()


def test_failed_build_leaves_nothing_that_looks_like_an_image(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_ext4(tree: Path, out: Path) -> int:
        out.write_bytes(b"half an image")
        raise ImageUnavailable("simulated failure while making the rootfs")

    monkeypatch.setattr(builder_module, "make_ext4", broken_ext4)
    with pytest.raises(ImageUnavailable, match="simulated"):
        ensure_image()
    assert current_image() is None
    assert list_images() == []
    assert not (private_cache / image_digest()).exists()
    assert not [p for p in private_cache.iterdir() if p.name.startswith(".build-")]


def test_killed_build_is_never_accepted_and_next_build_recovers(private_cache: Path) -> None:
    script = (
        "import sys\n"
        "from cleanroom.images import JsonProgress, ensure_image\n"
        "ensure_image(progress=JsonProgress(sys.stdout))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    killed = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            # All artifacts are in place, the manifest is not: the worst moment to die.
            if event.get("event") == "start" and event.get("step") == "manifest":
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert killed, "the build finished before it could be interrupted"
    assert [p for p in private_cache.iterdir() if p.name.startswith(".build-")]
    assert current_image() is None
    assert list_images() == []

    image = ensure_image()
    verify_image(image)
    assert [i.digest for i in list_images()] == [image.digest]
    assert not [p for p in private_cache.iterdir() if p.name.startswith(".build-")]
