"""Run each QEMU as an unprivileged user of its own, with descriptors for everything.

Under a root server, every run's QEMU (not the one that makes a snapshot,
which must spawn a process to save it) drops to a uid of its own from
:data:`VMM_UID_BASE` (no groups, no capabilities, ``no_new_privs``), so an
escaped VMM is neither root nor the same user as another run's VMM (which it
could otherwise ptrace). It opens no file of the host by path:

- disks are passed as descriptors in QEMU fd sets (``-add-fd``, used as
  ``/dev/fdset/N``; a read-only and, for writable disks, a read-write one,
  since QEMU probes read-only first), including the qcow2 overlay's backing
  file, so the run directory (0700) and the snapshot files (0600) stay root's;
- the kernel and initrd, which QEMU loads with plain ``open``, as
  ``/proc/self/fd/N`` (the directories above them are not searched again,
  the files themselves must be world-readable, as the image cache's are);
- the TAP as a descriptor attached in the run's namespace (``-netdev
  tap,fd=N``), so the unprivileged QEMU needs no ``CAP_NET_ADMIN``.
- a restored guest's RAM as ``/proc/self/fd/N`` of the server's sealed memfd
  (``sealed_ram``: reopened read-write, yet nothing can change its bytes).

It also gets a mount namespace of its own in which the host directories it
never needs (``/home``, ``/root``, ``/tmp``, ``/var``, ``/run``, ``/dev/shm``,
...) are empty read-only tmpfs mounts: one ``mount -a`` of a small fstab
written into the run directory, since QEMU opens nothing by path after exec.

It is also the first process, pid 1, of a pid namespace of its own (as
Firecracker's jailer does with ``--new-pid-ns``): the server's thread forks it
straight into a fresh namespace (``cleanroom.backends.qemu.pidns``), so the PID
the server holds, kills and reaps is QEMU's own, while QEMU sees no other process
and can signal none; ``/proc`` is mounted afresh in its mount namespace, so it
shows that namespace only. As a namespace's init, QEMU gets from outside only
the signals it handles (``SIGTERM``: a clean quit) and ``SIGKILL``.

Changing the uid clears the parent-death signal, so the wrapper sets it again
after the switch and then checks that the server still lives. Its parent's PID
is invisible from the new namespace (``$PPID`` is 0), so the check is the uid's
lock: the wrapper's stdin is a second open file of the lock file the server
holds for this uid (:meth:`VmmUser.watch`), and QEMU starts only if a shared
lock on it would block, i.e. while the server holds it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import stat
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.backends.process import ORPHANED_EXIT, pdeathsig_prefix
from cleanroom.backends.qemu.pidns import pid_namespace_blocker
from cleanroom.errors import RuntimeLaunchFailed

__all__ = [
    "MASKED_DIRS",
    "UID_LOCK_DIR",
    "VMM_UID_BASE",
    "VMM_UID_COUNT",
    "FdHandover",
    "VmmUser",
    "drop_prefix",
    "kvm_groups",
    "open_tap",
    "unprivileged_blocker",
    "write_mask_fstab",
]

VMM_UID_BASE = 0x70000000
"""First uid handed to a VMM (above the ranges systemd's nspawn and DynamicUser use)."""
VMM_UID_COUNT = 65536

_NETNS_DIR = Path("/var/run/netns")
_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_RO = os.O_RDONLY | os.O_CLOEXEC
_RW = os.O_RDWR | os.O_CLOEXEC

_lock = threading.Lock()
_taken: set[int] = set()


UID_LOCK_DIR = Path("/run/cleanroom-vmm-uids")
"""One lock file per uid in use by a running VMM, host-wide (every server on the
host shares the range; a dead server's locks go with it)."""


@dataclass
class VmmUser:
    """A uid (and gid) held by one running QEMU until :meth:`release`."""

    uid: int
    _lock_fd: int | None = None
    _lock_path: Path | None = None

    @classmethod
    def take(cls, lock_dir: Path = UID_LOCK_DIR) -> VmmUser:
        """The lowest uid of the range that no VMM on this host holds (its lock file
        in ``lock_dir`` is flocked until release); ``RuntimeLaunchFailed`` if none."""
        try:
            lock_dir.mkdir(mode=0o700, exist_ok=True)
            with _lock:
                for uid in range(VMM_UID_BASE, VMM_UID_BASE + VMM_UID_COUNT):
                    if uid not in _taken and (fd := _claim(lock_dir / str(uid))) is not None:
                        _taken.add(uid)
                        return cls(uid, fd, lock_dir / str(uid))
        except OSError as exc:
            raise RuntimeLaunchFailed(
                f"cannot claim an unprivileged uid for QEMU: {exc.strerror or exc}"
            ) from exc
        raise RuntimeLaunchFailed("no unprivileged uid is free for another VMM")

    def watch(self) -> int:
        """A new read-only descriptor of this uid's lock file (its own open file, so
        a lock through it conflicts with the one held here): whoever holds it can
        tell whether the uid is still held, by ``flock -n -s``. Raises
        ``RuntimeLaunchFailed`` once released."""
        if self._lock_fd is None or self._lock_path is None:
            raise RuntimeLaunchFailed(f"the VMM uid {self.uid} is no longer held")
        try:
            return os.open(self._lock_path, _RO | os.O_NOFOLLOW)
        except OSError as exc:
            raise RuntimeLaunchFailed(
                f"cannot open the lock of the VMM uid {self.uid}: {exc.strerror or exc}"
            ) from exc

    def release(self) -> None:
        """Give the uid back (after its QEMU is reaped); idempotent."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None
            with _lock:
                _taken.discard(self.uid)


def _claim(path: Path) -> int | None:
    """An flocked descriptor of ``path``, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def unprivileged_blocker(files: list[Path]) -> str | None:
    """Why QEMU cannot run unprivileged here (None: it can): the server is not root
    (QEMU already runs as the server's user), ``setpriv`` is missing, or one of
    ``files`` (kernel, initrd) is not world-readable."""
    if os.geteuid() != 0:
        return f"the server runs as uid {os.geteuid()}, and QEMU as the same user"
    for tool in ("setpriv", "unshare", "mount", "flock"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is missing"
    if (pidns := pid_namespace_blocker()) is not None:
        return pidns
    for path in files:
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror or exc}"
        if not mode & stat.S_IROTH:
            return f"{path} is not world-readable"
    return None


# Masked, not used: nothing is ever created in them.
MASKED_DIRS = (
    "/home",
    "/root",
    "/tmp",  # noqa: S108
    "/var",
    "/run",
    "/srv",
    "/opt",
    "/mnt",
    "/media",
    "/dev/shm",  # noqa: S108
)
"""Hidden from QEMU (empty, read-only) in its mount namespace."""
_MASK_OPTIONS = "ro,nosuid,nodev,noexec,size=4k,mode=0555"
_MASK_SCRIPT = 'mount -a -T "$1" || exit 126; shift; exec "$@"'
_PROC_LINE = "cleanroom-proc /proc proc nosuid,nodev,noexec 0 0\n"
# stdin is the uid's lock (VmmUser.watch): a shared lock on it blocks (75) only
# while the server holds the uid; anything else (it is free, an error) stops here.
_HELD_SCRIPT = 'flock -n -s -E 75 0; [ "$?" = 75 ] || exit {code}; exec "$@" </dev/null'


def write_mask_fstab(path: Path, *, proc: bool = False) -> Path:
    """Write the fstab that masks :data:`MASKED_DIRS` (those that exist) to ``path``;
    with ``proc``, it also mounts a fresh ``/proc`` (of the mounting process's pid
    namespace: in ``pidns.new_pid_namespace``, one that shows QEMU alone)."""
    lines = [
        f"cleanroom-empty {d} tmpfs {_MASK_OPTIONS} 0 0\n" for d in MASKED_DIRS if Path(d).is_dir()
    ]
    if proc:
        lines.append(_PROC_LINE)
    path.write_text("".join(lines))
    return path


def kvm_groups() -> tuple[int, ...]:
    """The group owning ``/dev/kvm`` (a KVM guest's QEMU needs it), if there is one."""
    try:
        return (Path("/dev/kvm").stat().st_gid,)
    except OSError:
        return ()


def drop_prefix(
    user: VmmUser,
    *,
    groups: tuple[int, ...] = (),
    parent: int | None = None,
    mask: Path | None = None,
    watched: bool = False,
) -> list[str]:
    """The wrapper that runs the rest of the argv as ``user`` with only ``groups``
    (e.g. the owner group of ``/dev/kvm``), no capabilities and ``no_new_privs``,
    dying with ``parent`` (default: this process); with ``mask`` (an fstab from
    :func:`write_mask_fstab`), in a private mount namespace with those mounts.

    ``watched``: for a wrapper started in ``pidns.new_pid_namespace``, where its
    parent's PID cannot be checked. It dies with its parent all the same, but
    checks instead that ``user`` is still held, through its stdin, which must be
    :meth:`VmmUser.watch` (and which it replaces by ``/dev/null``); it exits with
    :data:`~cleanroom.backends.process.ORPHANED_EXIT` if not.
    """
    uid = str(user.uid)
    ns: list[str] = []
    if mask is not None:
        ns = ["unshare", "--mount", "--propagation", "private", "--"]
        ns += ["/bin/sh", "-c", _MASK_SCRIPT, "sh", str(mask)]
    drop = [*ns, "setpriv", "--reuid", uid, "--regid", uid]
    drop += ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    drop += ["--no-new-privs"]
    drop += ["--inh-caps", "-all", "--bounding-set", "-all", "--"]
    if watched:
        # The prefix's own setpriv (is it missing? it names it), with the held check.
        setpriv = pdeathsig_prefix(parent)[0]
        held = _HELD_SCRIPT.format(code=ORPHANED_EXIT)
        return [*drop, setpriv, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", held, "sh"]
    return [*drop, *pdeathsig_prefix(parent)]


@dataclass
class FdHandover:
    """Host files opened by the server and handed to QEMU as descriptors."""

    fds: dict[int, str] = field(default_factory=dict)
    """Descriptor -> what it is (for ``pass_fds`` and the plan)."""
    add_fd: list[str] = field(default_factory=list)
    """QEMU's ``-add-fd`` arguments."""
    _sets: int = 0

    def _open(self, path: Path, flags: int, what: str) -> int:
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW)
        except OSError as exc:
            raise RuntimeLaunchFailed(
                f"cannot open {what} for QEMU: {exc.strerror or exc}", details={"path": str(path)}
            ) from exc
        self.fds[fd] = what
        return fd

    def disk(self, path: Path, *, writable: bool, what: str) -> Path:
        """``path`` as a QEMU fd set (``/dev/fdset/N``)."""
        self._sets += 1
        fds = [self._open(path, _RO, f"{what} (read)")]
        if writable:
            fds.append(self._open(path, _RW, f"{what} (read-write)"))
        for fd in fds:
            self.add_fd += ["-add-fd", f"fd={fd},set={self._sets}"]
        return Path(f"/dev/fdset/{self._sets}")

    def file(self, path: Path, what: str) -> Path:
        """``path`` as ``/proc/self/fd/N`` (for what QEMU opens with plain ``open``)."""
        return Path(f"/proc/self/fd/{self._open(path, _RO, what)}")

    def adopt(self, fd: int, what: str) -> int:
        """Hand over an already open descriptor (closed with the others)."""
        self.fds[fd] = what
        return fd

    def close(self) -> None:
        """Close the server's copies (QEMU has its own after the spawn); idempotent."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def open_tap(netns: str, tap: str) -> int:
    """A descriptor attached to the TAP ``tap`` in namespace ``netns`` (``TUNSETIFF``
    on a fresh thread that enters the namespace and then ends). Raises
    ``RuntimeLaunchFailed``."""
    box: list[int] = []
    errors: list[OSError] = []

    def attach() -> None:
        try:
            ns = os.open(_NETNS_DIR / netns, _RO)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(ns, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(ns)
            fd = os.open("/dev/net/tun", _RW)
            try:
                flags = _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR
                fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", tap.encode(), flags))
            except OSError:
                os.close(fd)
                raise
            box.append(fd)
        except OSError as exc:
            errors.append(exc)

    # The thread ends in the run's namespace: no other code ever runs on it.
    thread = threading.Thread(target=attach, name=f"tap-{tap}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise RuntimeLaunchFailed(
            f"cannot attach to the TAP {tap}: {errors[0].strerror or errors[0]}",
            details={"netns": netns, "tap": tap},
        ) from errors[0]
    return box[0]
