"""The QEMU backend end to end on real guests (TCG here; KVM where it boots)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from backend_guest_scenarios import commands_and_discarded_writes, launch_deadline_too_short

from cleanroom.backends.qemu import QemuBackend, QemuConfig, VerdictCache
from cleanroom.images import GuestImage, ensure_image

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
