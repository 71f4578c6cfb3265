"""A pid namespace of its own for each QEMU, with QEMU itself as its pid 1.

``unshare(CLONE_NEWPID)`` moves only the caller's future children, and only
those of the calling thread: so the server's thread that spawns QEMU enters a
fresh namespace for exactly that one fork and goes back to its own at once
(``setns``). QEMU thus stays the server's direct child (same PID to kill and
reap, same exit status, same parent-death signal), while in its namespace it is
pid 1 and alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator

from cleanroom.errors import RuntimeLaunchFailed

__all__ = ["new_pid_namespace", "pid_namespace_blocker"]

_CLONE_NEWPID = 0x20000000
_RO = os.O_RDONLY | os.O_CLOEXEC


def _libc_call(name: str, *args: int) -> None:
    """Call libc's ``name`` (``unshare``, ``setns``); ``OSError`` on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


@contextlib.contextmanager
def new_pid_namespace() -> Iterator[None]:
    """Within the block, the next process this thread forks is the first (pid 1)
    of a new pid namespace; fork exactly one, and never await inside the block.

    Only the calling thread is affected (``unshare(CLONE_NEWPID)`` changes the
    namespace of its future children, not its own), and it is set back to its own
    namespace on leaving (``setns``), so nothing else it forks later is moved.
    The forked process stays this thread's child: its PID here, its exit status
    and its parent-death signal are as without the namespace. Needs root;
    raises ``RuntimeLaunchFailed``.
    """
    try:
        own = os.open("/proc/thread-self/ns/pid", _RO)
    except OSError as exc:
        raise RuntimeLaunchFailed(f"cannot open the pid namespace: {exc.strerror or exc}") from exc
    try:
        try:
            _libc_call("unshare", _CLONE_NEWPID)
        except OSError as exc:
            raise RuntimeLaunchFailed(
                f"cannot make a pid namespace for QEMU: {exc.strerror or exc}"
            ) from exc
        try:
            yield
        finally:
            try:
                _libc_call("setns", own, _CLONE_NEWPID)
            except OSError as exc:  # root going back to its own namespace: not seen
                raise RuntimeLaunchFailed(
                    f"cannot leave QEMU's pid namespace: {exc.strerror or exc}"
                ) from exc
    finally:
        os.close(own)


def pid_namespace_blocker() -> str | None:
    """Why QEMU cannot get a pid namespace of its own here (None: it can), tried
    on a thread of its own that then ends (so nothing else is affected)."""
    errors: list[OSError] = []

    def attempt() -> None:
        try:
            _libc_call("unshare", _CLONE_NEWPID)
        except OSError as exc:
            errors.append(exc)

    thread = threading.Thread(target=attempt, name="pidns-probe", daemon=True)
    thread.start()
    thread.join()
    if errors:
        return f"no pid namespace can be made: {errors[0].strerror or errors[0]}"
    return None
