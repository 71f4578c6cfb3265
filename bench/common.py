"""Shared benchmark plumbing: servers under test, statistics, host facts, output."""

from __future__ import annotations

import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cleanroom.errors import CleanroomError

if TYPE_CHECKING:
    from cleanroom.client import Client

__all__ = [
    "CLI",
    "Server",
    "host_facts",
    "make_workspace",
    "print_table",
    "serve",
    "summarize",
]

CLI = str(Path(sys.executable).with_name("cleanroom"))
_SERVERS = itertools.count()


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """median, p90, min, max (ms, one decimal)."""
    ordered = sorted(samples_ms)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "median": round(statistics.median(ordered), 1),
        "p90": round(p90, 1),
        "min": round(ordered[0], 1),
        "max": round(ordered[-1], 1),
    }


def host_facts() -> dict[str, Any]:
    """Cores, memory and kernel of the machine the numbers came from."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


@dataclass
class Server:
    """A ``cleanroom serve`` subprocess on its own socket and config."""

    proc: subprocess.Popen[bytes]
    host: str
    home: Path
    env: dict[str, str]
    """The server's environment (its config), for CLI commands that read the config."""

    def client(self) -> Client:
        from cleanroom.client import Client  # noqa: PLC0415 - keep the other benches light

        return Client(self.host)

    def pool_ready(self) -> tuple[int, int]:
        """(ready, size) of the server's warm pool, from ``GET /v1/doctor``."""
        with self.client() as c:
            report = c.doctor()
        for check in report.checks:
            if check.name.startswith("pool."):
                return int(check.details["ready"]), int(check.details["size"])
        return 0, 0

    def wait_pool(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, size = self.pool_ready()
            if size and ready >= size:
                return
            time.sleep(0.25)
        raise TimeoutError("the warm pool did not fill in time")


@contextmanager
def serve(
    home: Path,
    *,
    pool_size: int,
    accel: str,
    launch_seconds: float = 60,
    snapshots: bool = False,
    extra_config: str = "",
) -> Iterator[Server]:
    """Start ``cleanroom serve`` with its own config (pool size, accel, whether runs
    are restored from a snapshot, ``extra_config`` YAML lines) and socket.

    Its sandboxes use a namespace made here as their uplink, so benchmarking
    never changes the host's own firewall or forwarding settings.
    """
    # Unique per server: a benchmark may run two servers side by side.
    uplink = f"crb-up-{os.getpid()}-{next(_SERVERS)}"
    subprocess.run(["ip", "netns", "add", uplink], check=True)
    config_home = home / "config"
    (config_home / "cleanroom").mkdir(parents=True, exist_ok=True)
    (config_home / "cleanroom" / "config.yaml").write_text(
        f"pool: {{size: {pool_size}}}\n"
        f"backends: {{qemu: {{accel: {accel}, launch_seconds: {launch_seconds}, "
        f"snapshots: {'on' if snapshots else 'off'}}}}}\n"
        f"network: {{uplink_netns: {uplink}, resolvers: [192.0.2.53]}}\n" + extra_config
    )
    sock = home / "cleanroom.sock"
    # Its own state directory too: a server clears the pool directory there at start.
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home), "XDG_STATE_HOME": str(home / "state")}
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [CLI, "serve", "--listen", f"unix://{sock}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(proc, f"unix://{sock}", home, env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with server.client() as c:
                    c.health()
                break
            except CleanroomError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start; see {home / 'server.log'}") from None
                time.sleep(0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["ip", "netns", "del", uplink], check=False)


def make_workspace(root: Path) -> Path:
    """A tiny repository with a deny-all policy."""
    ws = root / "repo"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "cleanroom.yaml").write_text("version: 1\n")
    (ws / "README").write_text("benchmark workspace\n")
    return ws


def print_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    """A fixed-width table of median/p90/min/max per row."""
    print(f"\n{title}")
    print(f"{'':28} {'median':>10} {'p90':>10} {'min':>10} {'max':>10}   (ms)")
    for name, st in rows:
        print(
            f"{name:28} {st['median']:>10.1f} {st['p90']:>10.1f} {st['min']:>10.1f} "
            f"{st['max']:>10.1f}"
        )


def emit_json(value: dict[str, Any]) -> None:
    """One JSON object on stdout (``--json``)."""
    sys.stdout.write(json.dumps(value, sort_keys=True) + "\n")
