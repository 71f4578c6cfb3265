"""A snapshot's RAM held by the server in a sealed memfd that restored guests map privately.

Why not the file itself: QEMU 7.2 opens a ``memory-backend-file``'s
``mem-path`` read-write (a ``readonly`` one makes the guest's RAM read-only
too), so a restored QEMU mapping the snapshot's ``ram.raw`` could write (or
punch holes in) the file every later guest starts from, and one running as a
uid of its own cannot open that root-owned file at all. Instead the server
copies ``ram.raw`` once into a memfd and adds the seals
``F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`` (:data:`SEALS`):
from then on nobody, root included, can change its bytes or size (``write``,
``ftruncate``, ``fallocate`` hole punching and writable shared mappings all
fail with ``EPERM``) nor remove the seals. A restored QEMU inherits a
descriptor of it and maps it as ``/proc/self/fd/N`` with ``share=off``: a
memfd's inode is mode 0777, so QEMU's read-write ``open`` of that path
succeeds even as an unprivileged uid, and a private (copy-on-write) mapping of
a write-sealed memfd is allowed. Every guest restored from the snapshot reads
the same pages and gets its own copy only of those it writes.

Measured with the Linux 6.18 host kernel here (the unit tests repeat it as an
unprivileged uid): reopening the descriptor read-write succeeds; ``write``,
``pwritev``, ``ftruncate`` (shrink and grow), ``fallocate`` punch-hole,
``mmap(MAP_SHARED, PROT_WRITE)``, ``mprotect`` of a shared read-only mapping
to writable, ``F_ADD_SEALS``, ``fchmod`` and ``fchown`` all fail; a private
writable mapping works and its writes never reach the memfd.

The copy keeps only the file's non-zero pages (the rest stay holes, read as
zeros) and hashes every byte it reads against the snapshot's published sha256,
so the memfd holds exactly the verified RAM whatever happened to the file
after it was verified. One memfd per snapshot (:class:`SnapshotRams`), loaded
on first use and shared by every restore and pool refill; it is released when
its snapshot is replaced or pruned, or the backend closes (guests already
running keep their own descriptor and mapping).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import Collection
from pathlib import Path

from cleanroom._files import closed_on_error
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.images.snapshots import Snapshot, SnapshotInvalid

__all__ = ["SEALS", "SnapshotRams", "load_sealed"]

SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
"""The seals every snapshot RAM memfd carries: its content and size are final."""
_PAGE = 4096
_CHUNK = 1 << 20
_ZERO_CHUNK = bytes(_CHUNK)
_ZERO_PAGE = bytes(_PAGE)


def load_sealed(path: Path, size: int, sha256: str, *, name: str = "snapshot-ram") -> int:
    """A new sealed memfd (close-on-exec) holding the ``size`` bytes of ``path``
    whose sha256 must be ``sha256`` (see the module docstring).

    Raises ``SnapshotInvalid`` when the file is missing, of another size or
    content; ``RuntimeLaunchFailed`` when the memfd cannot be made or filled
    (e.g. out of memory). Nothing is left open on failure.
    """
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise SnapshotInvalid(f"snapshot file {path.name} is unreadable: {exc}") from exc
    try:
        if os.fstat(src).st_size != size:
            raise SnapshotInvalid(f"snapshot file {path.name} has the wrong size")
        try:
            fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            raise RuntimeLaunchFailed(f"cannot make a memfd for the snapshot's RAM: {exc}") from exc
        try:
            with closed_on_error(fd):
                _fill_and_seal(src, fd, size, sha256, path.name)
        except OSError as exc:
            raise RuntimeLaunchFailed(f"cannot load the snapshot's RAM: {exc}") from exc
        return fd
    finally:
        os.close(src)


def _fill_and_seal(src: int, dst: int, size: int, sha256: str, label: str) -> None:
    """Fill the memfd ``dst`` from ``src``, check the sha256, seal it."""
    if _copy_nonzero(src, dst, size, label) != sha256:
        raise SnapshotInvalid(f"snapshot file {label} does not match its sha256")
    fcntl.fcntl(dst, fcntl.F_ADD_SEALS, SEALS)


def _copy_nonzero(src: int, dst: int, size: int, label: str) -> str:
    """Copy the non-zero pages of ``src`` into ``dst`` (sized ``size`` first); the
    hex sha256 of all ``size`` bytes of ``src``, holes included."""
    os.ftruncate(dst, size)
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        data = _next_data(src, offset, size)
        while offset < data:  # a hole: zeros, hashed but not stored
            step = min(_CHUNK, data - offset)
            digest.update(_ZERO_CHUNK[:step])
            offset += step
        if offset >= size:
            break
        try:
            chunk = os.pread(src, min(_CHUNK, size - offset), offset)
        except OSError as exc:
            raise SnapshotInvalid(f"snapshot file {label} is unreadable: {exc}") from exc
        if not chunk:
            raise SnapshotInvalid(f"snapshot file {label} has the wrong size")
        digest.update(chunk)
        if chunk != _ZERO_CHUNK[: len(chunk)]:
            _write_pages(dst, chunk, offset)
        offset += len(chunk)
    return digest.hexdigest()


def _next_data(fd: int, offset: int, size: int) -> int:
    """The offset of the next data at or after ``offset`` (``size`` when only a hole
    is left); ``offset`` itself where the filesystem cannot say."""
    try:
        return min(os.lseek(fd, offset, os.SEEK_DATA), size)
    except OSError as exc:
        return size if exc.errno == errno.ENXIO else offset  # no data after offset


def _write_pages(fd: int, chunk: bytes, offset: int) -> None:
    """Write the runs of non-zero pages of ``chunk`` (read at ``offset``) to ``fd``."""
    view = memoryview(chunk)
    start: int | None = None
    for pos in range(0, len(chunk), _PAGE):
        zero = view[pos : pos + _PAGE] == _ZERO_PAGE[: min(_PAGE, len(chunk) - pos)]
        if zero and start is not None:
            os.pwrite(fd, view[start:pos], offset + start)
            start = None
        elif not zero and start is None:
            start = pos
    if start is not None:
        os.pwrite(fd, view[start:], offset + start)


class SnapshotRams:
    """The sealed RAM memfds of one backend's snapshots (see the module docstring)."""

    def __init__(self, file_name: str) -> None:
        self._file_name = file_name
        self._held: dict[str, tuple[str, int]] = {}
        """Snapshot key -> (sha256 of its RAM file, the memfd holding it)."""
        self._lock = asyncio.Lock()
        self._closed = False

    async def open(self, snap: Snapshot) -> int:
        """A new descriptor (close-on-exec, the caller closes it) of ``snap``'s sealed
        RAM memfd, loaded now if this is its first use or ``snap`` replaced the
        snapshot under its key. Raises ``SnapshotInvalid`` (no or a bad RAM file)
        and ``RuntimeLaunchFailed`` (see :func:`load_sealed`)."""
        seal = snap.files.get(self._file_name)
        if seal is None:
            raise SnapshotInvalid(f"snapshot has no {self._file_name}")
        async with self._lock:
            held = self._held.get(snap.key)
            if held is None or held[0] != seal.sha256:
                fd = await asyncio.to_thread(
                    load_sealed, snap.file(self._file_name), seal.size, seal.sha256
                )
                if self._closed:  # the backend closed meanwhile
                    os.close(fd)
                    raise RuntimeLaunchFailed("the backend is closing")
                self._held[snap.key] = (seal.sha256, fd)
                if held is not None:
                    os.close(held[1])
            return os.dup(self._held[snap.key][1])

    def keep(self, keys: Collection[str]) -> None:
        """Release the memfds of every snapshot but ``keys`` (the others were pruned)."""
        for key in [k for k in self._held if k not in keys]:
            _sha, fd = self._held.pop(key)
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Release every memfd, and any loaded after; idempotent."""
        self._closed = True
        self.keep(())

    @property
    def held(self) -> dict[str, int]:
        """Snapshot key -> the memfd this process holds for it (for diagnostics and tests)."""
        return {key: fd for key, (_sha, fd) in self._held.items()}
