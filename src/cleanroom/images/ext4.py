"""Turn a directory tree into a read-only ext4 image with ``mkfs.ext4 -d``.

The image is sized from the tree (blocks of every file and directory, inode
table, slack for metadata and extended attributes) so it is small and does not
need a journal: nothing ever writes it after it is made. Owners, modes, hard
links, symlinks, device nodes and extended attributes are copied by mke2fs
itself (e2fsprogs' ``populate_fs``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.tools import run_tool

__all__ = ["TreeSize", "make_ext4", "measure_tree"]

_BLOCK = 4096
_INODE_SIZE = 256
_MIB = 1 << 20
_FIXED_SLACK = 16 * _MIB
_FAST_SYMLINK = 59  # shorter targets live in the inode itself


class TreeSize:
    """Blocks and inodes a tree needs on ext4 with 4 KiB blocks."""

    def __init__(self, blocks: int, inodes: int, content_bytes: int) -> None:
        self.blocks = blocks
        self.inodes = inodes
        self.content_bytes = content_bytes

    def image_bytes(self) -> int:
        """A filesystem size with room for metadata: data + inode table + 10 % + 16 MiB."""
        data = self.blocks * _BLOCK
        size = data + data // 10 + self.inodes * _INODE_SIZE * 2 + _FIXED_SLACK
        return -(-size // _MIB) * _MIB


def measure_tree(tree: Path) -> TreeSize:
    """Count ``tree``'s blocks and inodes without following symlinks."""
    blocks = 0
    inodes = 1
    content = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(tree):
        entries = len(dirnames) + len(filenames)
        blocks += 1 + (entries * 64) // _BLOCK
        for name in (*dirnames, *filenames):
            st = (Path(dirpath) / name).lstat()
            if stat.S_ISDIR(st.st_mode):
                inodes += 1
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            inodes += 1
            if stat.S_ISREG(st.st_mode):
                blocks += -(-st.st_size // _BLOCK) + 1
                content += st.st_size
            elif stat.S_ISLNK(st.st_mode) and st.st_size > _FAST_SYMLINK:
                blocks += 1
    return TreeSize(blocks, inodes, content)


def make_ext4(tree: Path, output: Path, *, label: str = "cleanroom-user") -> TreeSize:
    """Write ``output`` (a new file) as an ext4 image of ``tree``, mode 0444.

    Raises ImageUnavailable (with mke2fs's stderr) if the tree cannot be copied.
    """
    try:
        size = measure_tree(tree)
    except OSError as exc:
        raise ImageUnavailable(f"cannot read the image tree: {exc.strerror or exc}") from exc
    try:
        with output.open("xb") as handle:
            handle.truncate(size.image_bytes())
    except OSError as exc:
        raise ImageUnavailable(f"cannot create {output.name}: {exc.strerror or exc}") from exc
    run_tool(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            str(_BLOCK),
            "-I",
            str(_INODE_SIZE),
            "-N",
            str(size.inodes + size.inodes // 10 + 256),
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0,lazy_itable_init=0",
            "-L",
            label,
            "-d",
            str(tree),
            str(output),
        ]
    )
    output.chmod(0o444)
    return size
