"""A minimal writer for the ``newc`` cpio format the Linux kernel unpacks as an initramfs.

Only what an initramfs needs: directories, regular files, symlinks and
character devices, all owned by root, with a fixed mtime so identical inputs
give identical archives. No hard links.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

__all__ = ["NewcWriter"]

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


class NewcWriter:
    """Writes entries to ``out`` in ``newc`` format; call :meth:`close` to write the trailer.

    Paths are archive paths without a leading slash (``"bin/busybox"``); the
    caller adds parent directories before their children.
    """

    def __init__(self, out: BinaryIO, *, mtime: int = 0) -> None:
        self._out = out
        self._mtime = mtime
        self._ino = 1
        self._closed = False
        self._names: set[str] = set()

    def _entry(
        self, name: str, mode: int, data: bytes, *, nlink: int = 1, rdev: tuple[int, int] = (0, 0)
    ) -> None:
        if self._closed:
            raise ValueError("archive already closed")
        name = name.strip("/") or "."
        if name in self._names and name != _TRAILER:
            raise ValueError(f"duplicate archive entry {name!r}")
        self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (
            self._ino,
            mode,
            0,  # uid
            0,  # gid
            nlink,
            self._mtime,
            len(data),
            0,  # devmajor
            0,  # devminor
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check (unused by newc)
        )
        self._ino += 1
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header)
        self._out.write(encoded)
        self._out.write(_pad4(len(header) + len(encoded)))
        self._out.write(data)
        self._out.write(_pad4(len(data)))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        """Add a directory."""
        self._entry(name, stat.S_IFDIR | mode, b"", nlink=2)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file with contents ``data``."""
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        """Add a symbolic link pointing at ``target``."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a character device node."""
        self._entry(name, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer entry. The output stream stays open."""
        self._entry(_TRAILER, 0, b"")
        self._closed = True
