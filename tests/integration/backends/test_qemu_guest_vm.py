"""The QEMU backend end to end on real guests (TCG here; KVM where it boots)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from backend_guest_scenarios import commands_and_discarded_writes, launch_deadline_too_short

from cleanroom.backends.qemu import QemuBackend, QemuConfig, VerdictCache
from cleanroom.backends.qemu.privilege import VMM_UID_BASE
from cleanroom.images import GuestImage, ensure_image
from cleanroom.testing.conformance import booted, run

pytestmark = [pytest.mark.vm, pytest.mark.image]


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return ensure_image()


def _backend(image: GuestImage, tmp_path: Path, accel: str = "tcg") -> QemuBackend:
    config = QemuConfig(
        kernel_image=image.kernel,
        initrd=image.initrd,
        rootfs=image.rootfs,
        accel=accel,  # type: ignore[arg-type]
        memory_mib=256,
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
        assert not any("run-a" in arg for arg in plan["argv"] if "fdset" in arg)
    # The run directory stayed root's, 0700 and its disks 0600 (nothing was chowned).
    assert (tmp_path / "run-a").stat().st_uid == 0
