"""The console log is bounded: a flood is read and dropped past the limit, never blocks."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from cleanroom.backends.console import ConsoleLog, truncation_marker


def _vmm_end(console: ConsoleLog) -> socket.socket:
    # What the VMM would inherit: its own copy of the descriptor.
    return socket.socket(fileno=os.dup(console.vmm_fd))


def test_flood_is_cut_at_the_limit_and_drained(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    console = ConsoleLog(path, limit=100_000)
    vmm = _vmm_end(console)
    console.start()
    total = 20 << 20
    chunk = b"\0" * 65536
    sent = 0
    vmm.settimeout(10)  # a reader that stopped draining would make this raise
    while sent < total:
        vmm.sendall(chunk)
        sent += len(chunk)
    vmm.close()  # the VMM exits
    console.close()
    data = path.read_bytes()
    assert data == b"\0" * 100_000 + truncation_marker(100_000)
    assert console.written == 100_000
    assert console.dropped == total - 100_000


def test_small_output_is_kept_whole_and_close_ends_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    console = ConsoleLog(path, limit=1 << 20)
    vmm = _vmm_end(console)
    console.start()
    line = b"[    0.000000] Linux version 6.1\n"
    vmm.sendall(line)
    deadline = time.monotonic() + 10
    while path.stat().st_size < len(line) and time.monotonic() < deadline:
        time.sleep(0.01)  # written as it arrives (boot failures read the tail)
    before = threading.active_count()
    console.close()  # the VMM end is still open: close must not wait for it
    assert threading.active_count() == before - 1
    vmm.close()
    assert path.read_bytes() == line


def test_close_before_start_releases_both_ends(tmp_path: Path) -> None:
    console = ConsoleLog(tmp_path / "console.log")
    fd = console.vmm_fd
    console.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
