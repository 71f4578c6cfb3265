"""Reconciling removes crashed servers' namespaces and never a live server's."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from network_fixtures import TEST_PREFIX

from cleanroom.errors import ConfigInvalid
from cleanroom.network import NetworkManager
from cleanroom.network.manager import DEFAULT_PREFIX, default_prefix
from cleanroom.network.owners import (
    OWNER_DIR,
    forget_owner,
    owned_elsewhere,
    owner_dir,
    record_owner,
)


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


def test_owner_dir_and_prefix_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLEANROOM_NETNS_OWNER_DIR", str(tmp_path / "owners"))
    monkeypatch.setenv("CLEANROOM_NETNS_PREFIX", "crx9-")
    assert owner_dir() == tmp_path / "owners"
    record_owner("crx9-a")
    assert (tmp_path / "owners" / "crx9-a").read_text().split()[0] == str(os.getpid())
    forget_owner("crx9-a")
    assert list((tmp_path / "owners").iterdir()) == []
    manager = NetworkManager(Settings())
    assert manager.prefix == "crx9-"
    assert manager.netns_name("run-0123456789abcdef") == "crx9-456789abcdef"
    assert NetworkManager(Settings(), prefix="given-").prefix == "given-"
    monkeypatch.delenv("CLEANROOM_NETNS_OWNER_DIR")
    monkeypatch.delenv("CLEANROOM_NETNS_PREFIX")
    assert owner_dir() == OWNER_DIR
    assert default_prefix() == DEFAULT_PREFIX == "crn-"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLEANROOM_NETNS_OWNER_DIR", "relative/dir"),
        ("CLEANROOM_NETNS_PREFIX", "Upper-"),
        ("CLEANROOM_NETNS_PREFIX", "9starts-with-digit"),
        ("CLEANROOM_NETNS_PREFIX", "a" * 17),
        ("CLEANROOM_NETNS_PREFIX", "has/slash"),
    ],
)
def test_bad_settings_are_config_invalid(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigInvalid):
        owner_dir() if name.endswith("OWNER_DIR") else default_prefix()


def test_this_test_run_is_private() -> None:
    assert TEST_PREFIX != DEFAULT_PREFIX
    assert not TEST_PREFIX.startswith(DEFAULT_PREFIX)  # a live server's reconcile skips it
    assert default_prefix() == TEST_PREFIX
    assert owner_dir() != OWNER_DIR
