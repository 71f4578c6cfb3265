"""The agent as the VM's PID 1: one real guest (QEMU microvm, TCG) through a whole session.

Covers what host-side tests cannot: init mounts, hostname, entropy crediting,
read-only workspace by bind mount in the guest, orphan reaping, and power-off
on SHUTDOWN (QEMU then exits by itself).
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_harness import Output

from cleanroom.agent.host import AgentClient
from cleanroom.changes import collect_artifacts, collect_changes, render_patch, take_manifest
from cleanroom.images import GuestImage, ensure_image

pytestmark = [
    pytest.mark.vm,
    pytest.mark.image,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu"),
]

PORT = "org.cleanroom.agent"


def _tsc_khz() -> int:
    """Host TSC kHz: TCG guests can hang at clock calibration without it."""
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    for line in dmesg.splitlines():
        if "tsc: Detected" in line and "MHz" in line:
            return int(float(line.split("tsc: Detected", 1)[1].split("MHz", 1)[0]) * 1000)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":", 1)[1]) * 1000)
    return 2_000_000


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return ensure_image()


class Guest:
    def __init__(
        self, proc: asyncio.subprocess.Process, client: AgentClient, console: Path, ready_s: float
    ):
        self.proc = proc
        self.client = client
        self.console = console
        self.ready_s = ready_s

    async def run(self, script: str, cwd: str = "/workspace") -> tuple[int, str, str]:
        out = Output()
        status = await self.client.exec(["sh", "-c", script], cwd=cwd, on_output=out)
        return status.exit_code, bytes(out.stdout).decode(), bytes(out.stderr).decode()


@pytest.fixture
async def guest(image: GuestImage, tmp_path: Path) -> AsyncIterator[Guest]:
    rootfs, sock, console = tmp_path / "rootfs.ext4", tmp_path / "agent.sock", tmp_path / "console"
    shutil.copyfile(image.rootfs, rootfs)  # writes must not touch the cached image
    argv = [
        "qemu-system-x86_64",
        *("-M", "microvm,pit=off,pic=off,isa-serial=on,rtc=on,acpi=on"),
        *("-accel", "tcg", "-cpu", "max", "-m", "256", "-no-reboot"),
        *("-nodefaults", "-no-user-config", "-display", "none"),
        *("-kernel", str(image.kernel), "-initrd", str(image.initrd)),
        "-append",
        f"console=ttyS0 panic=-1 tsc_early_khz={_tsc_khz()} cleanroom.channel=virtio-serial:{PORT}",
        *("-drive", f"id=root,file={rootfs},format=raw,if=none"),
        *("-device", "virtio-blk-device,drive=root", "-device", "virtio-serial-device"),
        *("-chardev", f"socket,id=agent,path={sock},server=on,wait=off"),
        *("-device", f"virtserialport,chardev=agent,name={PORT}"),
        *("-serial", f"file:{console}"),
    ]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    client: AgentClient | None = None
    try:
        for _ in range(6000):  # QEMU creates the socket right after it starts
            if sock.exists():
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        client = AgentClient(reader, writer)
        await client.hello(timeout=240)
        yield Guest(proc, client, console, time.monotonic() - started)
    finally:
        if client is not None:
            await client.close()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


WRITE_PROBE = (
    "import errno\ntry:\n open('x','w')\n print('WROTE')\n"
    "except OSError as e:\n print(errno.errorcode[e.errno])"
)


async def test_agent_as_pid1_full_session(guest: Guest) -> None:
    client = guest.client
    await client.configure(entropy_seed=bytes(range(64)))
    echo_ms = []
    for _ in range(5):
        t0 = time.monotonic()
        code, out, _ = await guest.run("echo hi", cwd="/")
        echo_ms.append((time.monotonic() - t0) * 1000)
        assert (code, out) == (0, "hi\n")
    # A second, warm-cache import: the agent's own import cost in the guest.
    probe = "python3 -X importtime -c 'import cleanroom.agent.guest' 2>&1 | tail -1"
    code, out, err = await guest.run(f"cd /opt/cleanroom/lib && {probe} && {probe}", cwd="/")
    print(f"QEMU start to agent hello {guest.ready_s:.2f} s; echo round trips {echo_ms} ms")
    print(f"agent import in the guest (cold, warm):\n{out.strip()}")

    code, out, _ = await guest.run("hostname; cat /proc/sys/kernel/random/entropy_avail", cwd="/")
    assert code == 0
    assert out.splitlines()[0] == "cleanroom"

    code, out, _ = await guest.run("cut -d' ' -f2 /proc/mounts", cwd="/")
    for mountpoint in ("/proc", "/sys", "/dev", "/dev/pts", "/tmp", "/run"):
        assert mountpoint in out.split(), out

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"hi\n"))
    stats = await client.send_workspace([buf.getvalue()], read_only=True)
    assert (stats.files, stats.bytes, stats.skipped) == (1, 3, 0)
    code, out, err = await guest.run(f'cat hello.txt; python3 -c "{WRITE_PROBE}"')
    assert (code, out) == (0, "hi\nEROFS\n"), err

    # Orphans (the killed background job) are reaped by init: no zombie stays.
    code, _, _ = await guest.run("sleep 100 & exit 7", cwd="/")
    assert code == 7
    zombies = "for i in 1 2 3 4 5 6 7 8 9 10; do n=$(grep -l '^State:.*Z' /proc/[0-9]*/status"
    zombies += " 2>/dev/null | wc -l); [ $n -eq 0 ] && break; sleep 0.2; done; echo $n"
    code, out, _ = await guest.run(zombies, cwd="/")
    assert out.strip() == "0"

    await client.shutdown(timeout=60)
    async with asyncio.timeout(120):
        assert await guest.proc.wait() == 0  # the guest powered itself off
    assert "powering off" in guest.console.read_text(errors="replace")


async def test_terminal_changes_and_artifacts_in_a_real_guest(guest: Guest, tmp_path: Path) -> None:
    """The issue-13 pieces as PID 1 in a VM: a pty, the manifest, changes, artifacts."""
    client = guest.client
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("old\n")
    (src / "keep").write_text("keep\n")
    manifest = take_manifest(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(src, arcname=".")
    await client.send_workspace([buf.getvalue()], read_only=False)

    out = Output()
    status = await client.exec(["stty", "size"], tty=(40, 100), on_output=out)
    assert (status.exit_code, bytes(out.stdout)) == (0, b"40 100\r\n")

    code, _, err = await guest.run("printf new > sub/a.txt; mkdir out; printf r > out/r.xml")
    assert code == 0, err
    changes = await collect_changes(client, tmp_path / "spool", manifest)
    assert [(c.path, c.change) for c in changes.changes] == [
        ("out", "added"),
        ("out/r.xml", "added"),
        ("sub/a.txt", "modified"),
    ]
    assert b"diff --git a/sub/a.txt b/sub/a.txt" in render_patch(changes, src, manifest)
    found = await collect_artifacts(client, ["out/*.xml"], tmp_path / "artifacts")
    assert [a.path for a in found.artifacts] == ["out/r.xml"]
    assert (tmp_path / "artifacts" / "out" / "r.xml").read_text() == "r"
