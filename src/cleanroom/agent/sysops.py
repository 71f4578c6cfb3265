"""Linux system operations the guest agent needs (mounts, power-off, entropy, network).

Stdlib only: this module runs inside the guest. Syscalls without a Python
wrapper go through ``ctypes`` on the C library; failures raise
:class:`GuestOperationFailed` (or ``OSError`` where the caller translates).
"""

# raw system files (/proc, /dev); os-level calls mirror the syscalls
# ruff: noqa: PTH103, PTH118, PTH123, PTH208
from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence

from cleanroom.agent.errors import GuestOperationFailed
from cleanroom.agent.messages import GuestNetwork
from cleanroom.agent.protocol import ERR_CONFIGURE

__all__ = [
    "SNAPSHOT_CMDLINE_FLAG",
    "add_entropy",
    "bind_read_only",
    "configure_network",
    "console_stdio",
    "find_labelled_disk",
    "init_mounts",
    "is_mount_point",
    "mount",
    "mount_workspace_disk",
    "power_off",
    "read_cmdline",
    "reseed_crng",
    "set_clock_from_rtc",
    "set_hostname",
    "snapshot_mode_requested",
    "unmount",
]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2
RB_POWER_OFF = 0x4321FEDC
# _IOW('R', 0x03, int[2]): credit entropy to the kernel pool (CAP_SYS_ADMIN).
RNDADDENTROPY = 0x40085203
# _IO('R', 0x07): reseed the kernel CRNG from its input pool now (CAP_SYS_ADMIN).
RNDRESEEDCRNG = 0x5207
# _IO(0x12, 97): write back and drop a block device's buffer cache.
BLKFLSBUF = 0x1261

# _IOR('p', 0x09, struct rtc_time): read the hardware clock (nine ints).
RTC_RD_TIME = 0x80247009
_RTC_TIME = struct.Struct("9i")

SNAPSHOT_CMDLINE_FLAG = "cleanroom.snapshot=1"
"""On the kernel command line of a guest booted to be snapshotted: init leaves the
workspace disk alone, and the agent mounts it at its first configure (after a restore,
when the disk attached is the run's own)."""

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc  # noqa: PLW0603 -- loaded once, lazily: most sessions never mount
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    """mount(2); raises OSError."""
    enc = os.fsencode
    rc = _c().mount(
        None if source is None else enc(source),
        enc(target),
        None if fstype is None else enc(fstype),
        ctypes.c_ulong(flags),
        enc(data) if data else None,
    )
    _check(rc, f"mount {target}")


def unmount(target: str) -> None:
    """umount2(target, MNT_DETACH); raises OSError."""
    _check(_c().umount2(os.fsencode(target), MNT_DETACH), f"umount {target}")


def is_mount_point(path: str) -> bool:
    return os.path.ismount(path)


def bind_read_only(path: str) -> None:
    """Bind-mount ``path`` on itself, then remount that bind read-only (writes: EROFS)."""
    mount(path, path, None, MS_BIND)
    try:
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    except OSError:
        unmount(path)
        raise


_INIT_MOUNTS: Sequence[tuple[str, str, str, int, str]] = (
    ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"),
    ("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),  # noqa: S108
    ("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),  # noqa: S108
    ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
)


def init_mounts() -> list[str]:
    """Mount the pseudo filesystems PID 1 needs, skipping those already mounted.

    Returns the problems met (logged by the caller; a missing /dev/shm must not
    stop the agent from answering).
    """
    problems: list[str] = []
    for source, target, fstype, flags, data in _INIT_MOUNTS:
        try:
            os.makedirs(target, exist_ok=True)
            if not os.path.ismount(target):
                mount(source, target, fstype, flags, data)
        except OSError as exc:
            problems.append(f"{target}: {exc}")
    return problems


def console_stdio() -> None:
    """Give PID 1 a stdin/stdout/stderr on ``/dev/console`` if it has none.

    The kernel opens the console for init before the initramfs has loaded
    virtio_console, so with ``console=hvc0`` init starts without fds 0-2 (and
    Python with ``sys.stderr`` None): every message would be lost, and the
    first ``print`` of a traceback would end init and panic the guest.
    """
    try:
        os.fstat(2)
    except OSError:
        pass
    else:
        return
    try:
        fd = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return
    for target in (0, 1, 2):
        if fd != target:
            os.dup2(fd, target)
    if fd > 2:
        os.close(fd)
    # Line-buffered text streams on the new fds; they live as long as init.
    sys.stdout = open(1, "w", 1, "utf-8", "replace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", 1, "utf-8", "replace", closefd=False)  # noqa: SIM115


WORKSPACE_LABEL = b"cleanroom-ws"
"""Label of the per-run workspace disk (see ``cleanroom.backends.workspace_disk``)."""
_EXT_SUPERBLOCK = 1024
_EXT_MAGIC_AT = 0x38
_EXT_LABEL_AT = 0x78


def find_labelled_disk(
    label: bytes, sys_block: str = "/sys/block", dev: str = "/dev"
) -> str | None:
    """The /dev path of the virtio disk whose ext2/3/4 volume label is ``label``, or None."""
    try:
        names = sorted(n for n in os.listdir(sys_block) if n.startswith("vd"))
    except OSError:
        return None
    for name in names:
        path = os.path.join(dev, name)
        try:
            with open(path, "rb") as fh:
                fh.seek(_EXT_SUPERBLOCK)
                sb = fh.read(_EXT_LABEL_AT + 16)
        except OSError:
            continue
        if len(sb) < _EXT_LABEL_AT + 16 or sb[_EXT_MAGIC_AT : _EXT_MAGIC_AT + 2] != b"\x53\xef":
            continue
        if sb[_EXT_LABEL_AT : _EXT_LABEL_AT + 16].rstrip(b"\x00") == label:
            return path
    return None


def snapshot_mode_requested(cmdline: str) -> bool:
    """Whether the kernel command line carries :data:`SNAPSHOT_CMDLINE_FLAG`."""
    return SNAPSHOT_CMDLINE_FLAG in cmdline.split()


def drop_block_caches(sys_block: str = "/sys/block", dev: str = "/dev") -> None:
    """Drop every virtio disk's buffer cache (ioctl BLKFLSBUF).

    A guest restored from a snapshot may still hold blocks it read from the
    placeholder disk attached at snapshot time (the kernel's partition scan reads
    its first page); the run's own disk now sits behind that device, so nothing
    cached from before may be read again.
    """
    try:
        names = sorted(n for n in os.listdir(sys_block) if n.startswith("vd"))
    except OSError:
        return
    for name in names:
        try:
            fd = os.open(os.path.join(dev, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.ioctl(fd, BLKFLSBUF)
        except OSError:
            pass
        finally:
            os.close(fd)


def mount_workspace_disk(target: str, *, fresh: bool = False) -> str | None:
    """Mount the workspace disk (if the VMM attached one) at ``target``; returns its device.

    ``fresh``: drop the disks' buffer caches first (see :func:`drop_block_caches`).
    ``noinit_itable``: the disk is a fresh sparse file, so zeroing its inode
    tables in the background would only cost the host writes and CPU.
    """
    if fresh:
        drop_block_caches()
    device = find_labelled_disk(WORKSPACE_LABEL)
    if device is None:
        return None
    os.makedirs(target, exist_ok=True)
    mount(device, target, "ext4", MS_NOSUID | MS_NODEV, "noinit_itable")
    return device


def read_cmdline(path: str = "/proc/cmdline") -> str:
    """The kernel command line ("" if /proc is not mounted)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def set_hostname(name: str) -> None:
    socket.sethostname(name)


def power_off() -> None:
    """sync(2) then reboot(RB_POWER_OFF). Returns only if the kernel refused."""
    os.sync()
    _c().reboot(ctypes.c_int(RB_POWER_OFF))


def add_entropy(seed: bytes, *, credit: bool) -> None:
    """Mix ``seed`` into the kernel pool; with ``credit`` also count it as entropy.

    Crediting (ioctl RNDADDENTROPY) unblocks getrandom() early in a fresh VM;
    it needs CAP_SYS_ADMIN, so only the VM's init uses it.
    """
    try:
        with open("/dev/random", "wb", buffering=0) as dev:
            if credit:
                info = struct.pack("ii", len(seed) * 8, len(seed)) + seed
                fcntl.ioctl(dev.fileno(), RNDADDENTROPY, info)
            else:
                dev.write(seed)
    except OSError as exc:
        raise GuestOperationFailed(ERR_CONFIGURE, f"entropy seed: {exc}") from exc


def reseed_crng() -> None:
    """Make the kernel CRNG reseed from its input pool now (ioctl RNDRESEEDCRNG).

    Credited entropy reseeds the CRNG at once only before it is first ready;
    a guest restored from a snapshot is long past that, and until its next
    scheduled reseed it would hand out the same bytes as every other guest
    restored from that snapshot. Needs CAP_SYS_ADMIN (the VM's init).
    """
    try:
        with open("/dev/random", "wb", buffering=0) as dev:
            fcntl.ioctl(dev.fileno(), RNDRESEEDCRNG)
    except OSError as exc:
        raise GuestOperationFailed(ERR_CONFIGURE, f"CRNG reseed: {exc}") from exc


def _ip(*args: str) -> None:
    try:
        proc = subprocess.run(
            ["ip", *args], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise GuestOperationFailed(ERR_CONFIGURE, f"ip {' '.join(args)}: {exc}") from exc
    if proc.returncode != 0:
        raise GuestOperationFailed(
            ERR_CONFIGURE, f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}"
        )


def configure_network(
    net: GuestNetwork, *, device: str = "eth0", resolv_conf: str = "/etc/resolv.conf"
) -> None:
    """Give ``device`` its address, bring it up, route by default via the gateway, set DNS."""
    for value in (net.address, net.gateway, net.dns):
        try:
            socket.inet_pton(socket.AF_INET, value)
        except OSError as exc:
            raise GuestOperationFailed(ERR_CONFIGURE, f"not an IPv4 address: {value!r}") from exc
    _ip("link", "set", "dev", "lo", "up")
    if net.mac is not None:
        _ip("link", "set", "dev", device, "address", net.mac)
    _ip("addr", "flush", "dev", device)
    _ip("addr", "add", f"{net.address}/{net.prefix}", "dev", device)
    _ip("link", "set", "dev", device, "up")
    _ip("route", "replace", "default", "via", net.gateway, "dev", device)
    try:
        with open(resolv_conf, "w", encoding="ascii") as fh:
            fh.write(f"nameserver {net.dns}\n")
    except OSError as exc:
        raise GuestOperationFailed(ERR_CONFIGURE, f"{resolv_conf}: {exc}") from exc


def set_clock_from_rtc(rtc: str = "/dev/rtc0") -> float:
    """Set the system clock from the hardware clock (UTC); returns the step in seconds.

    A guest restored from a snapshot resumes with the wall clock of the moment
    the snapshot was taken; the VMM's emulated RTC follows the host's clock, so
    it says what time it is now (to the second: the clock is set to the middle
    of that second, within half a second of the host's).
    """
    try:
        fd = os.open(rtc, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise GuestOperationFailed(ERR_CONFIGURE, f"clock: {exc}") from exc
    try:
        raw = fcntl.ioctl(fd, RTC_RD_TIME, bytes(_RTC_TIME.size))
    except OSError as exc:
        raise GuestOperationFailed(ERR_CONFIGURE, f"clock: {exc}") from exc
    finally:
        os.close(fd)
    sec, minute, hour, mday, mon, year = (int(v) for v in _RTC_TIME.unpack(raw)[:6])
    if not (0 <= sec <= 60 and 0 <= minute < 60 and 0 <= hour < 24 and 0 <= mon < 12):
        raise GuestOperationFailed(ERR_CONFIGURE, f"clock: the RTC says {raw!r}")
    days = _days_from_civil(year + 1900, mon + 1, mday)
    now = days * 86400 + hour * 3600 + minute * 60 + sec + 0.5
    step = now - time.time()
    try:
        time.clock_settime(time.CLOCK_REALTIME, now)
    except OSError as exc:
        raise GuestOperationFailed(ERR_CONFIGURE, f"clock: {exc}") from exc
    return step


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm;
    the ``datetime`` module costs a tenth of a second to import under emulation)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
