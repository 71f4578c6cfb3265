"""The QEMU backend end to end on real guests (TCG here; KVM where it boots)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from backend_guest_scenarios import commands_and_discarded_writes, launch_deadline_too_short

from cleanroom.backends.qemu import QemuBackend, QemuConfig, VerdictCache
from cleanroom.backends.qemu.privilege import VMM_UID_BASE
from cleanroom.backends.qemu.qmp import QmpClosed
from cleanroom.backends.vmguest import VMM_LOG_NAME
from cleanroom.images import GuestImage, ensure_image
from cleanroom.testing.conformance import booted, run

pytestmark = [pytest.mark.vm, pytest.mark.image]


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return ensure_image()


def _backend(
    image: GuestImage, tmp_path: Path, accel: str = "tcg", *, unprivileged: bool = True
) -> QemuBackend:
    config = QemuConfig(
        kernel_image=image.kernel,
        initrd=image.initrd,
        rootfs=image.rootfs,
        accel=accel,  # type: ignore[arg-type]
        memory_mib=256,
        unprivileged=unprivileged,
    )
    return QemuBackend(config, verdicts=VerdictCache(tmp_path / "verdicts.json"))


async def test_commands_signals_and_discarded_writes(image: GuestImage, tmp_path: Path) -> None:
    backend = _backend(image, tmp_path)
    caps = await backend.prepare()
    assert caps.isolation == "qemu-tcg"
    await commands_and_discarded_writes(backend, tmp_path)
    plan = json.loads((tmp_path / "run-1" / "plan.json").read_text())
    assert plan["isolation"] == "qemu-tcg"
    assert "-M" in plan["argv"]
    assert plan["rootfs"]["method"] in ("reflink", "qcow2-overlay", "copy")


async def test_launch_deadline_too_short(image: GuestImage, tmp_path: Path) -> None:
    backend = _backend(image, tmp_path)
    await backend.prepare()
    await launch_deadline_too_short(backend, tmp_path)


async def test_auto_accel_runs_a_real_kvm_canary(image: GuestImage, tmp_path: Path) -> None:
    """With /dev/kvm present, ``auto`` boots the image under KVM once and caches
    the verdict; a second backend reuses it without booting."""
    backend = _backend(image, tmp_path, accel="auto")
    caps = await backend.prepare()
    verdict = backend.verdict
    if verdict is None:
        assert caps.isolation == "qemu-tcg"  # no usable /dev/kvm: nothing to test
        return
    expected = "qemu-kvm" if verdict.kvm_works else "qemu-tcg"
    assert caps.isolation == expected
    stored = json.loads((tmp_path / "verdicts.json").read_text())
    assert stored[verdict.key]["kvm_works"] is verdict.kvm_works
    again = _backend(image, tmp_path, accel="auto")
    await again.prepare()
    assert again.verdict == verdict  # from the cache (same checked_at)


async def test_doctor(image: GuestImage, tmp_path: Path) -> None:
    checks = {c.name: c for c in await _backend(image, tmp_path).doctor()}
    assert checks["qemu.binary"].status == "pass"
    assert checks["qemu.image"].status == "pass"
    # TCG is emulation: a warning that says it is not a security boundary.
    assert checks["qemu.accel"].status == "warn"
    assert "not a security boundary" in checks["qemu.accel"].reason
    assert checks["qemu.accel"].details["isolation"] == "qemu-tcg"


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def test_each_qemu_runs_as_an_unprivileged_uid_of_its_own(
    image: GuestImage, tmp_path: Path
) -> None:
    backend = _backend(image, tmp_path)
    await backend.prepare()
    assert backend.machine is not None
    assert backend.machine.unprivileged
    async with (
        booted(backend, tmp_path / "run-a", "run-a") as (first, client),
        booted(backend, tmp_path / "run-b", "run-b") as (second, _),
    ):
        uids = []
        for guest in (first, second):
            status = _status(guest.pid)  # type: ignore[attr-defined]
            real, effective, saved, fs = (int(v) for v in status["Uid"].split())
            assert real == effective == saved == fs >= VMM_UID_BASE
            assert status["Gid"].split()[0] == str(real)
            assert status["Groups"] == ""
            assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
            assert status["NoNewPrivs"] == "1"
            pid = guest.pid  # type: ignore[attr-defined]
            # A mount namespace of its own, where the host's /home, /tmp etc. are empty.
            assert Path(f"/proc/{pid}/ns/mnt").readlink() != Path("/proc/self/ns/mnt").readlink()
            mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            masked = {ln.split()[4] for ln in mounts if " - tmpfs cleanroom-empty " in ln}
            assert {"/home", "/root", "/tmp", "/run"} <= masked
            uids.append(real)
        assert uids[0] != uids[1]  # one escaped VMM cannot ptrace another
        # The root overlay it got as descriptors (over the base's) is writable.
        exit_status, out = await run(client, "echo hi > /root-marker && cat /root-marker")
        assert (exit_status.exit_code, bytes(out.stdout)) == (0, b"hi\n")
        plan = json.loads(first.plan_path.read_text())
        assert plan["vmm_uid"] == uids[0]
        assert plan["vmm_namespaces"] == ["mnt", "pid"]
        assert not any("run-a" in arg for arg in plan["argv"] if "fdset" in arg)
        pids = [first.pid, second.pid]  # type: ignore[attr-defined]
        for pid in pids:
            # pid 1 of a pid namespace of its own, yet the PID held here is QEMU's,
            # and its /proc (remounted in its mount namespace) shows itself alone.
            assert Path(f"/proc/{pid}/ns/pid").readlink() != Path("/proc/self/ns/pid").readlink()
            assert _status(pid)["NSpid"].split() == [str(pid), "1"]
            assert Path(f"/proc/{pid}/exe").readlink().name.startswith("qemu-system")
            seen = [p.name for p in Path(f"/proc/{pid}/root/proc").iterdir() if p.name.isdigit()]
            assert seen == ["1"]
        # As pid 1 QEMU still quits cleanly on SIGTERM; status and stderr reach us.
        os.kill(pids[1], signal.SIGTERM)
        for _ in range(600):
            if second.exited() is not None:
                break
            await asyncio.sleep(0.05)
        assert second.exited() == 0
        assert "terminating on signal 15" in (tmp_path / "run-b" / VMM_LOG_NAME).read_text()
        # And on QMP quit (the QMP socketpair handed over still works).
        with contextlib.suppress(QmpClosed):
            await first._qmp.execute("quit")  # type: ignore[attr-defined]
        for _ in range(600):
            if first.exited() is not None:
                break
            await asyncio.sleep(0.05)
        assert first.exited() == 0
    for pid in pids:  # gone with the run
        assert not Path(f"/proc/{pid}").exists()
    # The run directory stayed root's, 0700 and its disks 0600 (nothing was chowned).
    assert (tmp_path / "run-a").stat().st_uid == 0


async def test_privileged_mode_keeps_qemu_in_the_servers_namespaces(
    image: GuestImage, tmp_path: Path
) -> None:
    backend = _backend(image, tmp_path, unprivileged=False)
    await backend.prepare()
    assert backend.machine is not None
    assert not backend.machine.unprivileged
    async with booted(backend, tmp_path / "run-p", "run-p") as (guest, client):
        pid = guest.pid  # type: ignore[attr-defined]
        assert _status(pid)["Uid"].split()[0] == "0"
        assert Path(f"/proc/{pid}/ns/pid").readlink() == Path("/proc/self/ns/pid").readlink()
        exit_status, out = await run(client, "echo hi")
        assert (exit_status.exit_code, bytes(out.stdout)) == (0, b"hi\n")
        assert json.loads(guest.plan_path.read_text())["vmm_namespaces"] == []
    assert not Path(f"/proc/{pid}").exists()


# A "server": boots a guest on the real backend, writes QEMU's PID, then waits to be killed.
_SERVER = """
import asyncio, sys
from pathlib import Path
from cleanroom.backends.qemu import QemuBackend, QemuConfig, VerdictCache
from cleanroom.images import ensure_image
from cleanroom.testing.conformance import booted

async def main(tmp: Path) -> None:
    image = ensure_image()
    config = QemuConfig(kernel_image=image.kernel, initrd=image.initrd, rootfs=image.rootfs,
                        accel="tcg", memory_mib=256)
    backend = QemuBackend(config, verdicts=VerdictCache(tmp / "verdicts.json"))
    await backend.prepare()
    async with booted(backend, tmp / "run-k", "run-k") as (guest, _):
        (tmp / "qemu.pid").write_text(str(guest.pid))
        await asyncio.sleep(600)

asyncio.run(main(Path(sys.argv[1])))
"""


def test_a_server_killed_with_sigkill_leaves_no_qemu(tmp_path: Path) -> None:
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SERVER), str(tmp_path)])
    pid_file = tmp_path / "qemu.pid"
    try:
        deadline = time.monotonic() + 300
        while not (pid_file.exists() and pid_file.read_text()):
            assert server.poll() is None, "the server died before its guest was up"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        qemu = int(pid_file.read_text())
        assert _status(qemu)["NSpid"].split() == [str(qemu), "1"]
    finally:
        server.kill()
        server.wait()
    for _ in range(200):
        if not Path(f"/proc/{qemu}").exists():
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{qemu}").exists()
