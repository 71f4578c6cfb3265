"""The guest kernel: find it in an unpacked Debian kernel package, recover an ELF vmlinux.

Debian's x86_64 bzImage carries an LZ4-compressed (legacy frame) kernel. The
uncompressed ELF ``vmlinux`` that Firecracker needs starts right after the LZ4
legacy magic, so it is recovered by piping the bzImage from that offset to
``lz4 -d`` and checking the result is an ELF file.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cleanroom.errors import ImageUnavailable

__all__ = ["KernelTree", "extract_vmlinux", "find_kernel", "find_modules"]

LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class KernelTree:
    """A kernel package unpacked into ``root``."""

    root: Path
    version: str
    bzimage: Path
    modules_dir: Path


def find_kernel(root: Path) -> KernelTree:
    """Locate the single ``/boot/vmlinuz-*`` and its ``/lib/modules/<version>`` under ``root``."""
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise ImageUnavailable(f"expected one boot/vmlinuz-* in the kernel package, found {images}")
    version = images[0].name.removeprefix("vmlinuz-")
    modules = root / "lib" / "modules" / version
    if not modules.is_dir():
        raise ImageUnavailable(f"kernel package has no lib/modules/{version}")
    return KernelTree(root=root, version=version, bzimage=images[0], modules_dir=modules)


def extract_vmlinux(bzimage: Path, out: Path) -> None:
    """Write the ELF kernel embedded in ``bzimage`` to ``out``.

    Tries each LZ4 legacy magic in order (the first is normally the payload).
    Raises ImageUnavailable if none decompresses to an ELF file.
    """
    data = bzimage.read_bytes()
    offset = data.find(LZ4_LEGACY_MAGIC)
    tried = 0
    while offset >= 0 and tried < 8:
        tried += 1
        try:
            with out.open("wb") as sink:
                # lz4 complains about the bzImage trailer after the stream; the ELF
                # check below is what decides success.
                subprocess.run(
                    ["lz4", "-d", "-c"],
                    input=data[offset:],
                    stdout=sink,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
        except OSError as exc:
            raise ImageUnavailable(f"cannot run lz4 to extract vmlinux: {exc}") from exc
        with out.open("rb") as result:
            head = result.read(4)
        if head == ELF_MAGIC and out.stat().st_size > 1 << 20:
            return
        offset = data.find(LZ4_LEGACY_MAGIC, offset + 1)
    out.unlink(missing_ok=True)
    raise ImageUnavailable(
        f"{bzimage.name}: no LZ4 payload decompresses to an ELF vmlinux "
        f"(tried {tried} candidate offsets)"
    )


def find_modules(
    tree: KernelTree, required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, Path]:
    """Map module names to their ``.ko``/``.ko.xz`` files, in the given order.

    A missing required module raises ImageUnavailable; a missing optional one
    is left out. ``-`` and ``_`` are interchangeable in names, as for modprobe.
    """
    index: dict[str, Path] = {}
    for path in sorted(tree.modules_dir.rglob("*.ko*")):
        stem = path.name.split(".ko", 1)[0]
        index.setdefault(stem.replace("-", "_"), path)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in (*required, *optional):
        module = index.get(name.replace("-", "_"))
        if module is not None:
            found[name] = module
        elif name in required:
            missing.append(name)
    if missing:
        raise ImageUnavailable(
            f"kernel {tree.version} lacks the modules {', '.join(missing)}",
            details={"missing_modules": missing},
        )
    return found
