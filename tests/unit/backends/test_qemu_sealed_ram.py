"""The snapshot's RAM in a sealed memfd: what it holds, and that a VMM cannot change it.

The attack test runs the real drop wrapper (setpriv as root, the VMM's own
mount namespace) with the system Python standing in for QEMU: it gets the
memfd exactly as QEMU does (an inherited descriptor it reopens as
``/proc/self/fd/N``) and tries every way of changing it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from cleanroom.backends.qemu.privilege import VmmUser, drop_prefix, write_mask_fstab
from cleanroom.backends.qemu.sealed_ram import SEALS, SnapshotRams, load_sealed
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.images.snapshots import Snapshot, SnapshotCache, SnapshotInvalid

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")

SIZE = 8 << 20
PAGE = 4096


def _ram_file(path: Path, seed: int = 1) -> str:
    """A sparse RAM-like file: data pages, written zero pages, holes; its sha256."""
    with path.open("wb") as fh:
        fh.truncate(SIZE)
        fh.seek(0)
        fh.write(bytes([seed]) * PAGE + bytes(PAGE) + os.urandom(3 * PAGE))
        fh.seek(3 << 20)
        fh.write(bytes(1 << 20))  # written, but zeros
        fh.seek(5 << 20)
        fh.write(os.urandom(PAGE) + bytes(PAGE) + bytes([seed]) * 100)
        fh.seek(SIZE - PAGE)
        fh.write(b"\xee" * PAGE)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _content(fd: int) -> bytes:
    return os.pread(fd, SIZE + 1, 0)


def test_the_memfd_holds_the_verified_bytes_sealed_and_only_nonzero_pages(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ram.raw"
    sha = _ram_file(path)
    fd = load_sealed(path, SIZE, sha)
    try:
        assert _content(fd) == path.read_bytes()
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == SEALS
        assert os.get_inheritable(fd) is False
        # 6 data pages and 101 bytes of a seventh: the zeros are not stored.
        assert os.fstat(fd).st_blocks * 512 <= 8 * PAGE
        # Sealed for root too (the server itself).
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, SIZE * 2)
    finally:
        os.close(fd)
    with pytest.raises(SnapshotInvalid, match="does not match its sha256"):
        load_sealed(path, SIZE, "0" * 64)
    with pytest.raises(SnapshotInvalid, match="wrong size"):
        load_sealed(path, SIZE + PAGE, sha)
    with pytest.raises(SnapshotInvalid, match="unreadable"):
        load_sealed(tmp_path / "missing", SIZE, sha)


# Every way a process holding the descriptor could change the memfd, as QEMU
# would go about it: reopen /proc/self/fd/N read-write (what QEMU 7.2 does with
# mem-path), then write, resize, punch, map shared, reseal, chmod; and a
# private mapping, which must work (it is how the guest's RAM is mapped).
ATTACK = r"""
import ctypes, fcntl, json, mmap, os, sys
fd = int(sys.argv[1])
out = {"uid": os.getuid()}
rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
out["reopened_rw"] = True
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
def c_call(ret):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
def shared_then_writable():
    addr = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, rw, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    c_call(libc.mprotect(addr, 4096, mmap.PROT_READ | mmap.PROT_WRITE))
attempts = {
    "write": lambda: os.pwrite(rw, b"X", 0),
    "write_inherited": lambda: os.pwrite(fd, b"X", 0),
    "pwritev": lambda: os.pwritev(rw, [b"X"], 0),
    "shrink": lambda: os.ftruncate(rw, 4096),
    "grow": lambda: os.ftruncate(rw, 1 << 30),
    "punch_hole": lambda: c_call(libc.fallocate(rw, 3, 0, 4096)),
    "mmap_shared_writable": lambda: mmap.mmap(rw, 4096, mmap.MAP_SHARED,
                                              mmap.PROT_READ | mmap.PROT_WRITE),
    "mprotect_shared_writable": shared_then_writable,
    "remove_seals": lambda: fcntl.fcntl(rw, fcntl.F_ADD_SEALS, 0),
    "fchmod": lambda: os.fchmod(rw, 0o777),
    "fchown": lambda: os.fchown(rw, os.getuid(), os.getgid()),
}
for name, attempt in attempts.items():
    try:
        attempt()
        out[name] = "succeeded"
    except OSError as exc:
        out[name] = exc.errno
private = mmap.mmap(rw, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
private[0:1] = b"P"
out["private_write_seen"] = private[0:1].decode()
print(json.dumps(out))
"""


@needs_root
def test_an_unprivileged_vmm_cannot_change_the_snapshot_ram(tmp_path: Path) -> None:
    path = tmp_path / "ram.raw"
    sha = _ram_file(path, seed=7)
    fd = load_sealed(path, SIZE, sha)
    user = VmmUser.take(tmp_path)
    try:
        wrapper = drop_prefix(user, mask=write_mask_fstab(tmp_path / "mounts.fstab"))
        done = subprocess.run(
            [*wrapper, "/usr/bin/python3", "-I", "-c", ATTACK, str(fd)],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out.pop("uid") == user.uid
        assert out.pop("reopened_rw") is True
        assert out.pop("private_write_seen") == "P"
        # Every change is refused (EPERM; EACCES for the mprotect).
        assert {name: got in (1, 13) for name, got in out.items()} == dict.fromkeys(out, True), out
        assert hashlib.sha256(_content(fd)).hexdigest() == sha
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == SEALS
    finally:
        user.release()
        os.close(fd)


def _publish(cache: SnapshotCache, key: str, seed: int) -> Snapshot:
    with cache.staging() as staging:
        _ram_file(staging / "ram.raw", seed)
        return cache.publish(staging, key, {"x": 1}, ("ram.raw",))


def _inode(fd: int) -> int:
    return os.fstat(fd).st_ino


async def test_one_memfd_per_snapshot_reloaded_when_replaced_released_when_pruned(
    tmp_path: Path,
) -> None:
    cache = SnapshotCache(tmp_path / "snapshots")
    rams = SnapshotRams("ram.raw")
    first = _publish(cache, "a" * 64, seed=1)
    other = _publish(cache, "b" * 64, seed=2)
    fds: list[int] = []
    try:
        fds += [await rams.open(first), await rams.open(first), await rams.open(other)]
        # One memfd per snapshot, handed out as new descriptors of it.
        assert len(set(fds)) == 3
        assert _inode(fds[0]) == _inode(fds[1]) != _inode(fds[2])
        assert _content(fds[0]) == first.file("ram.raw").read_bytes()
        # The same key published again (remade): its RAM is loaded afresh.
        remade = _publish(cache, "a" * 64, seed=3)
        fds.append(await rams.open(remade))
        assert _inode(fds[3]) != _inode(fds[0])
        assert _content(fds[3]) == remade.file("ram.raw").read_bytes()
        # Descriptors handed out stay valid whatever the registry releases.
        rams.keep(["a" * 64])
        assert list(rams.held) == ["a" * 64]
        assert _content(fds[2]) == other.file("ram.raw").read_bytes()
        held = rams.held["a" * 64]
        rams.close()
        assert rams.held == {}
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(held)
        with pytest.raises(RuntimeLaunchFailed, match="closing"):
            await rams.open(other)
    finally:
        for fd in fds:
            os.close(fd)


async def test_a_snapshot_without_a_ram_file_is_refused(tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path)
    with cache.staging() as staging:
        (staging / "memory.mig").write_bytes(b"m")
        snap = cache.publish(staging, "c" * 64, {"x": 1}, ("memory.mig",))
    with pytest.raises(SnapshotInvalid, match=r"no ram\.raw"):
        await SnapshotRams("ram.raw").open(snap)
