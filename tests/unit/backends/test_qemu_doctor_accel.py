"""The ``qemu.accel`` doctor check: emulation (TCG) is a warning, never a pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanroom.backends.images import BootImage
from cleanroom.backends.qemu import QemuBackend, QemuConfig
from cleanroom.backends.qemu.accel import AccelVerdict, VerdictCache, verdict_key


def backend(tmp_path: Path, accel: str) -> QemuBackend:
    config = QemuConfig(accel=accel)  # type: ignore[arg-type]
    return QemuBackend(config, verdicts=VerdictCache(tmp_path / "verdicts.json"))


@pytest.mark.parametrize(
    ("accel", "identity", "status"),
    [
        ("tcg", "kvm-x", "warn"),
        ("tcg", None, "warn"),
        ("auto", None, "warn"),
        ("kvm", None, "pass"),
    ],
)
def test_tcg_is_a_warning(tmp_path: Path, accel: str, identity: str | None, status: str) -> None:
    check = backend(tmp_path, accel)._accel_check(identity, "7.2", None)
    assert check.name == "qemu.accel"
    assert check.status == status
    if status == "warn":
        assert "not a security boundary" in check.reason
        assert check.details["isolation"] == "qemu-tcg"


@pytest.mark.parametrize(("kvm_works", "status"), [(False, "warn"), (True, "pass")])
def test_a_cached_canary_verdict_decides(tmp_path: Path, kvm_works: bool, status: str) -> None:
    image = BootImage(
        kernel=tmp_path / "k",
        vmlinux=tmp_path / "v",
        initrd=None,
        rootfs=tmp_path / "r",
        digest="d" * 64,
        kernel_version="6.1",
        path=tmp_path,
    )
    be = backend(tmp_path, "auto")
    key = verdict_key("kvm-x", "7.2", image.digest)
    VerdictCache(tmp_path / "verdicts.json").put(AccelVerdict(key, kvm_works, "canary", "now"))
    check = be._accel_check("kvm-x", "7.2", image)
    assert check.status == status
    assert ("not a security boundary" in check.reason) is (not kvm_works)
