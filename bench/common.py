"""Shared benchmark plumbing: servers under test, statistics, host facts, output."""

from __future__ import annotations

import asyncio
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
    from cleanroom.images import GuestImage

__all__ = [
    "CLI",
    "Server",
    "emit_json",
    "exit_on_sigterm",
    "floor_argv",
    "host_facts",
    "make_workspace",
    "print_table",
    "report",
    "serve",
    "summarize",
    "time_true",
    "with_facts",
]

CLI = str(Path(sys.executable).with_name("cleanroom"))
_SERVERS = itertools.count()
_UPLINK_PREFIX = "crb-up-"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the server's child process: be sent SIGTERM when the benchmark dies, so a
    killed benchmark never leaves its server (and the server's namespaces) behind."""
    import ctypes  # noqa: PLC0415 - only in the child, before exec

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _remove_stale_uplinks() -> None:
    """Delete uplink namespaces left by benchmarks that were killed (their pid, the
    middle of the name, is gone): SIGKILL gives no chance to clean up."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(_UPLINK_PREFIX):
            continue
        pid = name[len(_UPLINK_PREFIX) :].partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", name], check=False)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so ``with serve(...)`` blocks stop their
    servers and delete their namespaces when the benchmark is terminated."""

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)


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
        """(ready, size) of the server's warm pools, from ``GET /healthz`` (cheap:
        polling ``/v1/doctor`` instead ran its checks, ~0.4 s of CPU each, on the
        very cores the refill being waited for needed)."""
        with self.client() as c:
            health = c.health()
        return health.warm_ready, health.warm_size

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
    _remove_stale_uplinks()
    # Unique per server: a benchmark may run two servers side by side.
    uplink = f"{_UPLINK_PREFIX}{os.getpid()}-{next(_SERVERS)}"
    subprocess.run(["ip", "netns", "add", uplink], check=True)
    try:
        config_home = home / "config"
        (config_home / "cleanroom").mkdir(parents=True, exist_ok=True)
        (config_home / "cleanroom" / "config.yaml").write_text(
            f"pool: {{size: {pool_size}}}\n"
            f"backends: {{qemu: {{accel: {accel}, launch_seconds: {launch_seconds}, "
            f"snapshots: {'on' if snapshots else 'off'}}}}}\n"
            f"network: {{uplink_netns: {uplink}, resolvers: [192.0.2.53]}}\n" + extra_config
        )
        # Its own state directory too: a server clears the pool directory there at start.
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(config_home),
            "XDG_STATE_HOME": str(home / "state"),
        }
        with (home / "server.log").open("wb") as log:
            yield from _run_server(home, env, log)
    finally:
        subprocess.run(["ip", "netns", "del", uplink], check=False)


def _run_server(home: Path, env: dict[str, str], log: Any) -> Iterator[Server]:
    """Start the server, wait until it answers, yield it; stop it on every exit."""
    sock = home / "cleanroom.sock"
    proc = subprocess.Popen(
        [CLI, "serve", "--listen", f"unix://{sock}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, no locks taken
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


def with_facts(
    out: dict[str, Any], *, runs: int, stats: dict[str, Any], accel: str | None = None
) -> dict[str, Any]:
    """``out`` followed by what every benchmark reports: runs, accel (if any), host, stats."""
    return {
        **out,
        "runs": runs,
        **({} if accel is None else {"accel": accel}),
        "host": host_facts(),
        "stats": stats,
    }


def report(
    out: dict[str, Any],
    *,
    as_json: bool,
    title: str,
    rows: list[tuple[str, dict[str, float]]],
    footer: str,
) -> None:
    """``out`` as one JSON object (``--json``), else ``rows`` as a table and a ``footer``."""
    if as_json:
        emit_json(out)
        return
    print_table(title, rows)
    print(footer)


def floor_argv(
    runtime: GuestImage,
    accel: str,
    sock_path: Path,
    *,
    image_mode: bool = False,
    drives: Sequence[tuple[str, str]] = (),
    console: Path | None = None,
) -> list[str]:
    """A minimal QEMU command line for the bare-VMM floor, written out by hand.

    The runtime kernel, initramfs and rootfs (a snapshot), then each ``(id, spec)``
    of ``drives`` as a virtio disk, an entropy source, and the agent's
    virtio-serial port at ``sock_path``; ``console`` adds a console device
    logging there (as every service guest has). ``image_mode`` boots into a
    user image (its disks among ``drives``).
    """
    from cleanroom.backends.hostinfo import host_tsc_khz  # noqa: PLC0415 - as above

    tsc = host_tsc_khz()
    append = (
        "console=hvc0 quiet panic=-1 cleanroom.root=/dev/vda "
        "cleanroom.channel=virtio-serial:org.cleanroom.agent"
        + (" cleanroom.image=1" if image_mode else "")
        + (f" tsc_early_khz={tsc}" if tsc and accel == "tcg" else "")
    )
    accel_args = (
        ["-accel", "tcg,tb-size=32", "-cpu", "max"]
        if accel == "tcg"
        else ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    )
    argv = [
        "qemu-system-x86_64",
        "-M", "microvm,acpi=on,pit=off,pic=off,isa-serial=off,rtc=on",
        *accel_args,
        "-m", "256", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(runtime.kernel), "-initrd", str(runtime.initrd), "-append", append,
        "-drive", f"id=root,file={runtime.rootfs},format=raw,if=none,snapshot=on,cache=unsafe",
        "-device", "virtio-blk-device,drive=root",
    ]  # fmt: skip
    for drive_id, spec in drives:
        argv += [
            "-drive",
            f"id={drive_id},{spec}",
            "-device",
            f"virtio-blk-device,drive={drive_id}",
        ]
    # Without an entropy source the guest's Python can wait for the kernel's
    # CRNG at start-up: a floor without it would flatter the cold ratio.
    argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom",
             "-device", "virtio-rng-device,rng=rng0"]  # fmt: skip
    if console is None:
        argv += ["-device", "virtio-serial-device"]
    else:
        argv += ["-device", "virtio-serial-device,max_ports=4",
                 "-chardev", f"file,id=console,path={console}",
                 "-device", "virtconsole,chardev=console"]  # fmt: skip
    argv += ["-chardev", f"socket,id=agent,path={sock_path},server=on,wait=off",
             "-device", "virtserialport,chardev=agent,name=org.cleanroom.agent"]  # fmt: skip
    return argv


async def time_true(argv: Sequence[str], sock_path: Path, *, hello_timeout: float) -> float:
    """Start the VMM ``argv``, greet its agent at ``sock_path`` and run ``true`` with
    cwd ``/``; the ms from start to its exit. The VMM is killed on every path."""
    from cleanroom.agent import AgentClient  # noqa: PLC0415 - keep the other benches light

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(sock_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.005)
        client = AgentClient(reader, writer)
        await client.hello(timeout=hello_timeout)

        async def sink(stream: str, data: bytes) -> None:
            return None

        status = await client.exec(["true"], cwd="/", on_output=sink)
        elapsed = (time.perf_counter() - t0) * 1000
        assert status.exit_code == 0, status
        await client.close()
        return elapsed
    finally:
        proc.kill()
        proc.wait()
