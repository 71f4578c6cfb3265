"""Doing work inside a named network namespace from this process.

``setns(2)`` switches only the calling thread, so :func:`call_in_netns` runs
the callable on a fresh, dedicated thread that enters the namespace, calls it,
and switches back. Sockets created there stay in that namespace for their
whole life, whichever thread later uses them (the event loop does). A fresh
thread per call (not a pool worker) means a thread that failed to switch back
can never be reused by unrelated code in the wrong namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cleanroom.errors import NetworkSetupFailed

__all__ = ["NETNS_DIR", "call_in_netns", "netns_path"]

NETNS_DIR = Path("/var/run/netns")
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def netns_path(name: str) -> Path:
    """Where ``ip netns add NAME`` bind-mounts the namespace."""
    return NETNS_DIR / name


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _run_in_thread(name: str, fn: Callable[[], T]) -> T:
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            errors.append(exc)
            return
        try:
            target_fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target_fd)
            finally:
                os.close(target_fd)
            try:
                box.append(fn())
            finally:
                _setns(own)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)
        finally:
            os.close(own)

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


async def call_in_netns(name: str, fn: Callable[[], T]) -> T:
    """Call ``fn()`` inside network namespace ``name`` and return its result.

    ``OSError`` (namespace missing, setns refused, or raised by ``fn``) becomes
    ``NetworkSetupFailed``; other exceptions from ``fn`` propagate unchanged.
    """
    try:
        return await asyncio.to_thread(_run_in_thread, name, fn)
    except OSError as exc:
        raise NetworkSetupFailed(
            f"cannot work inside network namespace {name}: {exc}", details={"netns": name}
        ) from exc
