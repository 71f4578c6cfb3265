"""Reconcile removes namespaces whose owner process is gone, and only those (root)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from network_fixtures import TAG, TEST_PREFIX, netns_names, sweep_dead_runs

from cleanroom.network import NetworkManager
from cleanroom.network.owners import OWNER_DIR, forget_owner, owner_dir


@dataclass(frozen=True)
class Settings:
    uplink_netns: str | None = None
    resolvers: tuple[str, ...] | None = ("192.0.2.53",)


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


@pytest.mark.network
async def test_reconcile_spares_a_live_owner_and_removes_a_dead_ones() -> None:
    name = f"{TEST_PREFIX}own"
    subprocess.run(["ip", "netns", "add", name], check=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owners = owner_dir()
        assert owners != OWNER_DIR  # this test run's own
        owners.mkdir(parents=True, exist_ok=True)
        (owners / name).write_text(f"{other.pid} {_start_time(other.pid)}\n")
        manager = NetworkManager(Settings(), prefix=TEST_PREFIX)
        assert name not in await manager.reconcile()
        assert name in netns_names()
        other.kill()
        other.wait()
        assert name in await manager.reconcile()
        assert name not in netns_names()
        assert not (owners / name).exists()
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        forget_owner(name)


@pytest.mark.network
def test_the_fixtures_sweep_only_the_namespaces_of_dead_test_runs() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = [f"crt-inet-{gone.pid}-{TAG}", f"crt-g-{gone.pid}-{TAG}-0"]
    live = [f"crt-inet-{other.pid}-{TAG}", f"crt-g-{other.pid}-{TAG}-0", f"crt-inet-{TAG}"]
    try:
        for name in dead + live:
            subprocess.run(["ip", "netns", "add", name], check=True)
        assert sorted(sweep_dead_runs()) == sorted(dead)
        names = netns_names()
        assert not set(dead) & set(names)
        assert set(live) <= set(names)  # a live run's, and one not named by a run
    finally:
        other.kill()
        other.wait()
        for name in dead + live:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
