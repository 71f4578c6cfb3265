"""One image build: from resolved inputs to a directory of artifacts plus a manifest.

Steps (each reported through :class:`~cleanroom.images.progress.Progress`):
download the .debs, unpack the kernel and recover its ELF vmlinux, unpack the
rootfs packages and complete the tree, compile bytecode with the guest's
Python, write the initramfs, make the ext4 rootfs, hash everything and write
the manifest (last). The caller owns the directories and their atomic
publication (see :mod:`cleanroom.images.cache`).
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cleanroom
from cleanroom.images.debian import download_packages, extract_package
from cleanroom.images.initramfs import build_initramfs
from cleanroom.images.kernel import extract_vmlinux, find_kernel, find_modules
from cleanroom.images.manifest import ARTIFACTS, MANIFEST_SCHEMA, file_sha256, write_manifest
from cleanroom.images.progress import Progress
from cleanroom.images.recipe import BuildInputs
from cleanroom.images.rootfs import compile_bytecode, finish_tree, make_ext4
from cleanroom.images.tools import run_tool

__all__ = ["build_artifacts"]


def _busybox_applets(busybox: Path) -> list[str]:
    """The applet paths (``usr/bin/env``) the static busybox of the guest provides."""
    proc = run_tool([busybox, "--list-full"])
    return [line.strip() for line in proc.stdout.decode().splitlines() if line.strip()]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def build_artifacts(
    inputs: BuildInputs, out: Path, work: Path, progress: Progress
) -> dict[str, Any]:
    """Build every artifact of ``inputs`` into ``out`` (scratch space in ``work``).

    Writes ``manifest.json`` into ``out`` as the very last step and returns it.
    Raises ImageUnavailable on any failure; ``out`` is then incomplete and
    must be discarded by the caller.
    """
    started = time.monotonic()
    debs_dir = work / "debs"
    kernel_root = work / "kernel"
    tree = work / "rootfs"
    for d in (debs_dir, kernel_root, tree):
        d.mkdir(parents=True)
    packages = [inputs.kernel, *inputs.rootfs_packages]

    progress.start("download", f"apt-get download {len(packages)} Debian packages")
    debs = download_packages(packages, debs_dir, progress, "download")
    progress.finish("download", _mib(sum(p.size for p in packages)))

    progress.start("kernel", f"unpack {inputs.kernel.name} and extract vmlinux")
    extract_package(debs[inputs.kernel.name], kernel_root)
    kernel = find_kernel(kernel_root)
    shutil.copyfile(kernel.bzimage, out / ARTIFACTS["kernel"])
    extract_vmlinux(kernel.bzimage, out / ARTIFACTS["vmlinux"])
    required = (*inputs.required_modules, *inputs.image_modules)
    modules = find_modules(kernel, required, inputs.optional_modules)
    progress.finish("kernel", f"{kernel.version}, {len(modules)} modules")

    progress.start("rootfs-tree", f"unpack {len(inputs.rootfs_packages)} packages")
    for i, package in enumerate(inputs.rootfs_packages, 1):
        extract_package(debs[package.name], tree)
        progress.advance("rootfs-tree", i, len(inputs.rootfs_packages), "packages")
    applets = _busybox_applets(tree / "bin/busybox")
    finish_tree(tree, applets=applets, agent_files=inputs.agent_files)
    progress.finish(
        "rootfs-tree", f"{len(applets)} busybox applets, {len(inputs.agent_files)} agent files"
    )

    progress.start("bytecode", "compile the Python stdlib and agent with the guest's python3.11")
    compile_bytecode(tree)
    progress.finish("bytecode")

    progress.start("initramfs", "write the initramfs (busybox, virtio modules, /init)")
    initrd_size = build_initramfs(
        out / ARTIFACTS["initrd"],
        busybox=tree / "bin/busybox",
        applets=applets,
        modules=modules,
        script=inputs.initramfs_init,
        compress=inputs.initramfs_compress,
    )
    progress.finish("initramfs", _mib(initrd_size))

    progress.start("rootfs", "make the ext4 root filesystem")
    rootfs_size = make_ext4(tree, out / ARTIFACTS["rootfs"])
    progress.finish("rootfs", _mib(rootfs_size))

    progress.start("manifest", "hash the artifacts and write the manifest")
    artifacts: dict[str, dict[str, Any]] = {}
    for i, (role, name) in enumerate(ARTIFACTS.items(), 1):
        path = out / name
        _fsync(path)
        artifacts[role] = {"file": name, "sha256": file_sha256(path), "size": path.stat().st_size}
        progress.advance("manifest", i, len(ARTIFACTS), "files")
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "digest": inputs.digest,
        "artifacts": artifacts,
        "packages": [
            {
                **p.to_dict(),
                "used_for": "kernel" if p in (inputs.kernel_meta, inputs.kernel) else "rootfs",
            }
            for p in (inputs.kernel_meta, inputs.kernel, *inputs.rootfs_packages)
        ],
        "kernel_version": kernel.version,
        "agent_version": inputs.agent_version,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 2),
        "builder_version": cleanroom.__version__,
        "recipe_version": inputs.recipe_version,
        "inputs": inputs.describe(),
    }
    write_manifest(out, manifest)
    progress.finish("manifest", inputs.digest[:12])
    return manifest
