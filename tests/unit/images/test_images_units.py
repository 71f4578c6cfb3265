"""Unit tests of the image builder's parts that need no Debian packages."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cleanroom.errors import ImageUnavailable
from cleanroom.images import debian
from cleanroom.images.cpio import NewcWriter
from cleanroom.images.initramfs import build_initramfs, init_script
from cleanroom.images.kernel import KernelTree, extract_vmlinux, find_modules
from cleanroom.images.manifest import (
    ARTIFACTS,
    MANIFEST_SCHEMA,
    file_sha256,
    image_from_paths,
    load_image,
    verify_image,
    write_manifest,
)
from cleanroom.images.progress import JsonProgress, PlainProgress
from cleanroom.images.recipe import agent_sources, agent_version
from cleanroom.images.tools import require_tools, run_tool

NewcReader = Callable[[bytes], dict[str, tuple[int, bytes]]]


def test_newc_roundtrip_and_busybox_lists_it(tmp_path: Path, read_newc: NewcReader) -> None:
    buf = io.BytesIO()
    w = NewcWriter(buf)
    w.add_dir("bin")
    w.add_file("bin/hello", b"hi there", mode=0o755)
    w.add_symlink("bin/sh", "/bin/busybox")
    w.add_chardev("console", 5, 1)
    w.close()
    parsed = read_newc(buf.getvalue())
    assert parsed["bin/hello"] == (0o100755, b"hi there")
    assert parsed["bin/sh"][1] == b"/bin/busybox"
    assert parsed["console"][0] & 0o170000 == 0o020000
    assert len(buf.getvalue()) % 4 == 0
    # An independent reader (busybox cpio) agrees on the listing.
    archive = tmp_path / "a.cpio"
    archive.write_bytes(buf.getvalue())
    busybox = shutil.which("busybox")
    if busybox is not None:
        with archive.open("rb") as stdin:
            listing = subprocess.run(
                [busybox, "cpio", "-t"], stdin=stdin, capture_output=True, check=True
            ).stdout.decode()
        assert set(listing.split()) == {"bin", "bin/hello", "bin/sh", "console"}


def test_newc_rejects_duplicates_and_writes_after_close() -> None:
    w = NewcWriter(io.BytesIO())
    w.add_dir("bin")
    with pytest.raises(ValueError, match="duplicate"):
        w.add_dir("bin")
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.add_dir("etc")


def test_initramfs_contents_and_compression(tmp_path: Path, read_newc: NewcReader) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    plain_ko = tmp_path / "virtio.ko"
    plain_ko.write_bytes(b"plain module")
    xz_ko = tmp_path / "virtio_blk.ko.xz"
    xz_ko.write_bytes(lzma.compress(b"xz module", format=lzma.FORMAT_XZ))
    script = init_script(["virtio", "virtio_blk"], ["vsock"])
    for compress in (False, True):
        out = tmp_path / f"initrd-{compress}"
        size = build_initramfs(
            out,
            busybox=busybox,
            applets=["bin/sh", "sbin/switch_root", "usr/bin/env", "bin/busybox", "weird/x"],
            modules={"virtio": plain_ko, "virtio_blk": xz_ko},
            script=script,
            compress=compress,
        )
        raw = out.read_bytes()
        assert size == len(raw)
        entries = read_newc(gzip.decompress(raw) if compress else raw)
        assert entries["init"] == (0o100755, script.encode())
        assert entries["bin/busybox"][1] == busybox.read_bytes()
        assert entries["bin/sh"][1] == b"/bin/busybox"
        assert entries["lib/modules/virtio.ko"][1] == b"plain module"
        assert entries["lib/modules/virtio_blk.ko"][1] == b"xz module"
        assert "weird/x" not in entries
        assert "dev/console" in entries


def test_init_script_module_order_and_failure_messages() -> None:
    script = init_script(["virtio_ring", "virtio", "virtio_mmio"], ["vsock"])
    assert 'required_modules="virtio_ring virtio virtio_mmio"' in script
    assert 'optional_modules="vsock"' in script
    assert "cleanroom-initramfs: $*" in script
    assert "missing module $m" in script
    assert "cannot mount root" in script
    assert "poweroff -f" in script
    assert "exec switch_root /newroot /sbin/cleanroom-init" in script
    # The script is valid sh.
    subprocess.run(["sh", "-n"], input=script.encode(), check=True)
    with_image = init_script(["virtio"], [], ["overlay"])
    assert 'image_modules="overlay"' in with_image
    assert "cleanroom.image=1) image=1 ;;" in with_image
    subprocess.run(["sh", "-n"], input=with_image.encode(), check=True)


def test_find_modules_required_optional_and_dash_underscore(tmp_path: Path) -> None:
    mods = tmp_path / "lib/modules/6.1.0-test"
    (mods / "kernel/drivers").mkdir(parents=True)
    (mods / "kernel/drivers/virtio-rng.ko").write_bytes(b"x")
    (mods / "kernel/drivers/virtio.ko.xz").write_bytes(b"x")
    tree = KernelTree(root=tmp_path, version="6.1.0-test", bzimage=tmp_path, modules_dir=mods)
    found = find_modules(tree, ["virtio", "virtio_rng"], ["vsock"])
    assert list(found) == ["virtio", "virtio_rng"]
    with pytest.raises(ImageUnavailable, match="virtio_blk") as info:
        find_modules(tree, ["virtio", "virtio_blk"])
    assert info.value.details["missing_modules"] == ["virtio_blk"]


def test_extract_vmlinux_rejects_payload_that_is_not_elf(tmp_path: Path) -> None:
    if shutil.which("lz4") is None:
        pytest.skip("lz4 not installed")
    payload = subprocess.run(
        ["lz4", "-l", "-c"], input=b"not an elf" * 1000, capture_output=True, check=True
    ).stdout
    fake = tmp_path / "bzImage"
    fake.write_bytes(b"\0" * 512 + payload + b"trailer")
    with pytest.raises(ImageUnavailable, match="ELF"):
        extract_vmlinux(fake, tmp_path / "vmlinux")
    assert not (tmp_path / "vmlinux").exists()


def test_extract_vmlinux_finds_elf_after_magic(tmp_path: Path) -> None:
    if shutil.which("lz4") is None:
        pytest.skip("lz4 not installed")
    elf = b"\x7fELF" + os.urandom(2 << 20)
    payload = subprocess.run(["lz4", "-l", "-c"], input=elf, capture_output=True, check=True).stdout
    assert payload.startswith(b"\x02\x21\x4c\x18")
    fake = tmp_path / "bzImage"
    fake.write_bytes(b"\x01" * 4096 + payload + b"\0" * 300)
    extract_vmlinux(fake, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == elf


def make_fake_image(root: Path, digest: str = "a" * 64) -> Path:
    """A synthetic image directory with real files and a manifest that matches them."""
    directory = root / digest
    directory.mkdir(parents=True)
    artifacts = {}
    for role, name in ARTIFACTS.items():
        path = directory / name
        path.write_bytes(f"{role} contents".encode() * 100)
        artifacts[role] = {"file": name, "sha256": file_sha256(path), "size": path.stat().st_size}
    write_manifest(
        directory,
        {
            "schema": MANIFEST_SCHEMA,
            "digest": digest,
            "artifacts": artifacts,
            "packages": [{"name": "libc6", "version": "2.36", "sha256": "0" * 64, "size": 1}],
            "kernel_version": "6.1.0-test",
            "agent_version": "0.0.1",
            "built_at": "2026-01-01T00:00:00+00:00",
            "build_seconds": 1.0,
            "builder_version": "0.1.0",
            "recipe_version": 1,
            "inputs": {},
        },
    )
    return directory


def test_load_and_verify_fake_image(tmp_path: Path) -> None:
    image = load_image(make_fake_image(tmp_path))
    assert image.kernel.name == "bzImage"
    assert image.kernel_version == "6.1.0-test"
    verify_image(image)


def test_verify_catches_flipped_byte_and_missing_file(tmp_path: Path) -> None:
    image = load_image(make_fake_image(tmp_path))
    data = bytearray(image.initrd.read_bytes())
    data[10] ^= 0x01
    image.initrd.write_bytes(bytes(data))
    with pytest.raises(ImageUnavailable, match="initrd does not match") as info:
        verify_image(image)
    assert info.value.details["file"] == str(image.initrd)
    data[10] ^= 0x01
    image.initrd.write_bytes(bytes(data))
    verify_image(image)
    image.vmlinux.unlink()
    with pytest.raises(ImageUnavailable, match="vmlinux is missing"):
        verify_image(image)


def test_manifest_parsing_is_strict(tmp_path: Path) -> None:
    directory = make_fake_image(tmp_path)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["surprise"] = 1
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ImageUnavailable, match="unknown keys"):
        load_image(directory)
    del manifest["surprise"]
    del manifest["kernel_version"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ImageUnavailable, match="missing keys"):
        load_image(directory)
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(ImageUnavailable, match="invalid image manifest"):
        load_image(directory)
    (directory / "manifest.json").unlink()
    with pytest.raises(ImageUnavailable, match="no image manifest"):
        load_image(directory)


def test_manifest_digest_must_match_directory(tmp_path: Path) -> None:
    directory = make_fake_image(tmp_path)
    renamed = directory.rename(tmp_path / ("b" * 64))
    with pytest.raises(ImageUnavailable, match="does not match the directory"):
        load_image(renamed)


def test_image_from_paths(tmp_path: Path) -> None:
    for name in ("k", "i", "r"):
        (tmp_path / name).write_bytes(b"x")
    image = image_from_paths(tmp_path / "k", tmp_path / "i", tmp_path / "r")
    assert image.digest == "user-provided"
    assert image.vmlinux == image.kernel
    verify_image(image)
    with pytest.raises(ImageUnavailable, match="rootfs"):
        image_from_paths(tmp_path / "k", tmp_path / "i", tmp_path / "missing")


def test_missing_tools_named_with_manual_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImageUnavailable) as info:
        require_tools()
    message = info.value.message
    for tool in ("apt-get", "dpkg-deb", "mkfs.ext4", "lz4"):
        assert tool in message
    assert "backends.qemu.kernel_image" in info.value.details["hint"]
    assert info.value.code == "image_unavailable"


def test_run_tool_translates_failures(tmp_path: Path) -> None:
    with pytest.raises(ImageUnavailable, match="exit status 3"):
        run_tool(["sh", "-c", "echo boom >&2; exit 3"])
    with pytest.raises(ImageUnavailable, match="not installed"):
        run_tool([str(tmp_path / "no-such-tool")])


def test_agent_sources_and_version(tmp_path: Path) -> None:
    with pytest.raises(ImageUnavailable, match=r"guest\.py"):
        agent_sources(tmp_path)
    (tmp_path / "guest.py").write_text("print('hi')\n")
    (tmp_path / "notes.txt").write_text("not python\n")
    files = agent_sources(tmp_path)
    assert list(files) == ["guest.py"]
    v1 = agent_version(files, from_package=False)
    v2 = agent_version({"guest.py": b"print('other')\n"}, from_package=False)
    assert v1.startswith("src-")
    assert v1 != v2


APT_SHOW = """\
Package: linux-image-cloud-amd64
Version: 6.1.1-1
Depends: linux-image-6.1.0-9-cloud-amd64 (= 6.1.1-1)
SHA256: aa
Size: 10

Package: libc6
Version: 2.36-9
Description: GNU C Library
 continuation line
SHA256: bb
Size: 20
"""


def test_resolution_cache_keyed_on_apt_state(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[list[str]] = []
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "Packages").write_text("v1")
    monkeypatch.setattr(debian, "_APT_STATE_PATHS", (lists,))

    def fake_run_tool(argv: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(list(argv))
        if "linux-image-6.1.0-9-cloud-amd64" in argv:
            text = (
                "Package: linux-image-6.1.0-9-cloud-amd64\nVersion: 6.1.1-1\nSHA256: cc\nSize: 30\n"
            )
        else:
            text = APT_SHOW
        return subprocess.CompletedProcess(argv, 0, text.encode(), b"")

    monkeypatch.setattr(debian, "run_tool", fake_run_tool)
    cache = tmp_path / "cache.json"
    first = debian.resolve_packages("linux-image-cloud-amd64", ["libc6"], cache_file=cache)
    assert [p.name for p in first] == [
        "linux-image-cloud-amd64",
        "linux-image-6.1.0-9-cloud-amd64",
        "libc6",
    ]
    assert first[2].version == "2.36-9"
    assert len(calls) == 2
    again = debian.resolve_packages("linux-image-cloud-amd64", ["libc6"], cache_file=cache)
    assert again == first
    assert len(calls) == 2  # answered from the cache
    time.sleep(0.01)
    (lists / "Packages").write_text("v2 changed")
    debian.resolve_packages("linux-image-cloud-amd64", ["libc6"], cache_file=cache)
    assert len(calls) == 4  # apt state changed: asked apt again


def test_resolution_reports_packages_without_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run_tool(argv: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(argv, 0, APT_SHOW.encode(), b"")

    monkeypatch.setattr(debian, "run_tool", fake_run_tool)
    with pytest.raises(ImageUnavailable, match="no candidate for libfoo") as info:
        debian.resolve_packages("linux-image-cloud-amd64", ["libc6", "libfoo"])
    assert info.value.details["missing_packages"] == ["libfoo"]


def test_progress_renderers(tmp_path: Path) -> None:
    out = io.StringIO()
    json_progress = JsonProgress(out)
    json_progress.start("download", "fetch")
    json_progress.advance("download", 5, 10, "bytes")
    json_progress.finish("download", "ok")
    json_progress.info("hello")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "advance", "finish", "info"]
    assert events[1] == {
        "event": "advance",
        "step": "download",
        "completed": 5,
        "total": 10,
        "unit": "bytes",
    }
    plain = io.StringIO()
    p = PlainProgress(plain)
    p.start("rootfs", "make ext4")
    p.finish("rootfs", "94 MiB")
    lines = plain.getvalue().splitlines()
    assert lines[0] == "[rootfs] make ext4"
    assert lines[1].startswith("[rootfs] done in ")
    assert lines[1].endswith(": 94 MiB")


def test_download_retries_after_apt_get_update(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = debian.DebPackage(name="libc6", version="2.36-9", sha256="bb", size=5)
    calls: list[list[str]] = []

    def fake_run_tool(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(list(argv))
        downloads = sum(1 for c in calls if c[:2] == ["apt-get", "download"])
        if argv[:2] == ["apt-get", "download"] and downloads == 1:
            raise ImageUnavailable("apt-get download failed: Unable to locate package")
        if argv[:2] == ["apt-get", "download"]:
            cwd = kwargs["cwd"]
            assert isinstance(cwd, Path)
            (cwd / "libc6_2.36-9_amd64.deb").write_bytes(b"12345")
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(debian, "run_tool", fake_run_tool)
    out = io.StringIO()
    debs = debian.download_packages([package], tmp_path, JsonProgress(out), "download")
    assert debs == {"libc6": tmp_path / "libc6_2.36-9_amd64.deb"}
    assert [c[:2] for c in calls] == [
        ["apt-get", "download"],
        ["apt-get", "update"],
        ["apt-get", "download"],
    ]
    assert "libc6=2.36-9" in calls[0]
    assert "running apt-get update" in out.getvalue()
