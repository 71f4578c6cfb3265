"""Reconciling removes crashed servers' namespaces and never a live server's."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cleanroom.network.owners import forget_owner, owned_elsewhere, record_owner


@dataclass(frozen=True)
class Settings:
    uplink_netns: str | None = None
    resolvers: tuple[str, ...] | None = ("192.0.2.53",)


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def test_owner_records(tmp_path: Path) -> None:
    record_owner("crn-x", tmp_path)
    assert not owned_elsewhere("crn-x", tmp_path)  # this process: its manager decides
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "crn-y").write_text(f"{other.pid} {_start_time(other.pid)}\n")
        assert owned_elsewhere("crn-y", tmp_path)
        (tmp_path / "crn-z").write_text(f"{other.pid} 1\n")  # same PID, other process
        assert not owned_elsewhere("crn-z", tmp_path)
    finally:
        other.kill()
        other.wait()
    assert not owned_elsewhere("crn-y", tmp_path)
    assert not owned_elsewhere("crn-missing", tmp_path)
    forget_owner("crn-x", tmp_path)
    assert not (tmp_path / "crn-x").exists()
