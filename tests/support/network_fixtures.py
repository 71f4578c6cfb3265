"""Network test topology: a fake internet namespace and fake guest namespaces.

Everything lives in namespaces these fixtures create (names start with
``crt`` and carry the creating process's PID and this test run's random tag)
and is removed in finalizers, also on failure. A run that was killed cannot
run its finalizers: each fixture first removes the namespaces of runs whose
process is gone (never another live run's). The internet has no
route out: its addresses are on its own ``lo`` and on the run veths only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import cleanroom.network.probe as probe_module

HERE = Path(__file__).resolve().parent
TAG = os.environ["CLEANROOM_TEST_TAG"]
"""This test run's random tag (tests/conftest.py); every namespace made here carries it."""
OWNED = re.compile(r"crt-(?:inet|g)-(?P<pid>[0-9]+)-[0-9a-f]+(?:-[0-9]+)?")
"""The namespaces these fixtures make: ``crt-inet-PID-TAG`` and ``crt-g-PID-TAG-N``."""
INET_NS = f"crt-inet-{os.getpid()}-{TAG}"
TEST_PREFIX = os.environ["CLEANROOM_NETNS_PREFIX"]
"""Run namespaces' prefix: the managers and services under test use it by default."""
DNS_ADDR = "192.0.2.53"
PROBE = str(Path(probe_module.__file__).resolve())

ZONE = {
    "allowed.example.test": "192.0.2.10",
    "a.wild.example.test": "192.0.2.20",
    "wild.example.test": "192.0.2.21",
    "evil.wild.example.test": "192.0.2.66",
    "blocked.example.test": "192.0.2.30",
    "changing.example.test": "203.0.113.100",
    "private.example.test": "10.99.0.5",
    "cgnat.example.test": "100.64.0.5",
}
INET_ADDRESSES = (
    "192.0.2.10/32",
    "192.0.2.20/32",
    "192.0.2.21/32",
    "192.0.2.30/32",
    "192.0.2.53/32",
    "192.0.2.66/32",
    "198.51.100.7/32",
    "198.51.100.8/32",
    "203.0.113.5/32",
    "203.0.113.9/32",
    "203.0.113.20/32",
    "203.0.113.100/32",
    "203.0.113.101/32",
    "169.254.169.254/32",
    # Private and CGNAT addresses: reachable only through rules naming their range.
    "10.99.0.5/32",
    "100.64.0.5/32",
    "172.16.0.5/32",
    "192.168.0.5/32",
)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def netns_names() -> list[str]:
    out = _ip("-j", "netns", "list").stdout.strip()
    return [e["name"] for e in json.loads(out)] if out else []


def nft_ruleset(netns: str) -> str:
    """``nft list ruleset`` inside ``netns``."""
    return _ip("netns", "exec", netns, "nft", "list", "ruleset").stdout


@dataclass
class Internet:
    netns: str
    zone_file: Path

    def set_answer(self, name: str, address: str) -> None:
        zone = json.loads(self.zone_file.read_text())
        zone[name] = address
        self.zone_file.write_text(json.dumps(zone))


def sweep_dead_runs() -> list[str]:
    """Remove the namespaces made here by test processes that are gone (a killed run
    leaks them); returns their names. Those of live processes stay."""
    removed = []
    for name in netns_names():
        owned = OWNED.fullmatch(name)
        if owned is not None and not Path(f"/proc/{owned['pid']}").exists():
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


@pytest.fixture(scope="session")
def internet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Internet]:
    if os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("needs root, ip and nft")
    sweep_dead_runs()
    zone_file = tmp_path_factory.mktemp("inet") / "zone.json"
    zone_file.write_text(json.dumps(ZONE))
    _ip("netns", "add", INET_NS)
    proc: subprocess.Popen[str] | None = None
    try:
        _ip("-n", INET_NS, "link", "set", "lo", "up")
        for address in INET_ADDRESSES:
            _ip("-n", INET_NS, "addr", "add", address, "dev", "lo")
        _ip("-n", INET_NS, "-6", "addr", "add", "2001:db8::10/128", "dev", "lo")
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                INET_NS,
                sys.executable,
                str(HERE / "inet_servers.py"),
                str(zone_file),
                *(a.split("/")[0] for a in INET_ADDRESSES),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield Internet(INET_NS, zone_file)
    finally:
        if proc is not None:
            proc.kill()
            proc.communicate()  # reaps it and closes its pipes
        _ip("netns", "del", INET_NS, check=False)


@pytest.fixture
def guest_ns_factory() -> Iterator[object]:
    sweep_dead_runs()
    made: list[str] = []

    def make() -> str:
        name = f"crt-g-{os.getpid()}-{TAG}-{len(made)}"
        _ip("netns", "add", name)
        made.append(name)
        return name

    yield make
    for name in made:
        _ip("netns", "del", name, check=False)


def probe(netns: str, *args: str) -> dict[str, object]:
    """Run the stdlib probe inside ``netns`` (a fake guest) and return its JSON result."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, PROBE, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result
