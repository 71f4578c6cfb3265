"""Host facts: TSC frequency (pure parsers plus the real host), KVM, VMM versions."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cleanroom.backends.hostinfo import (
    find_vmm_binary,
    host_kvm_identity,
    host_tsc_khz,
    parse_cpuinfo_tsc_khz,
    parse_dmesg_tsc_khz,
    vmm_version,
)
from cleanroom.backends.qemu import qemu_version
from cleanroom.errors import BackendUnavailable

DMESG = """\
[    0.000019] tsc: Detected 2100.000 MHz processor
[    0.104430] clocksource: tsc-early: mask: 0xffffffffffffffff
[    1.902112] tsc: Refined TSC clocksource calibration: 2099.998 MHz
"""


def test_refined_calibration_wins() -> None:
    assert parse_dmesg_tsc_khz(DMESG) == 2099998


def test_detected_is_the_fallback() -> None:
    assert parse_dmesg_tsc_khz(DMESG.splitlines()[0]) == 2100000


def test_nothing_in_the_log() -> None:
    assert parse_dmesg_tsc_khz("[    0.0] Linux version 6.1\n") is None
    assert parse_dmesg_tsc_khz("") is None


def test_cpuinfo() -> None:
    text = "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2893.204\ncache size\t: 1 KB\n"
    assert parse_cpuinfo_tsc_khz(text) == 2893204
    assert parse_cpuinfo_tsc_khz("processor\t: 0\n") is None


def test_this_host() -> None:
    khz = host_tsc_khz()
    assert khz is not None
    assert 100_000 < khz < 10_000_000  # 100 MHz .. 10 GHz
    assert host_tsc_khz() == khz  # cached


def test_kvm_identity_names_kernel_and_device() -> None:
    identity = host_kvm_identity()
    if identity is not None:
        assert "|kvm:" in identity


_SEMVER = re.compile(r"Tool\s+v?([0-9][^\s]*)")


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "tool"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_vmm_version_from_stdout_or_stderr(tmp_path: Path) -> None:
    assert vmm_version(_script(tmp_path, 'echo "Tool v1.2.3"'), _SEMVER) == "1.2.3"
    assert vmm_version(_script(tmp_path, 'echo "Tool 4.5" >&2'), _SEMVER) == "4.5"


def test_vmm_version_failures_are_backend_unavailable(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="broken") as info:
        vmm_version(_script(tmp_path, 'echo "Tool v1.0"; echo broken >&2; exit 3'), _SEMVER)
    assert info.value.details == {"binary": str(tmp_path / "tool")}
    with pytest.raises(BackendUnavailable, match="--version failed"):
        vmm_version(_script(tmp_path, "echo no version here"), _SEMVER)
    with pytest.raises(BackendUnavailable, match="cannot run"):
        vmm_version(str(tmp_path / "missing"), _SEMVER)


def test_qemu_version_of_the_installed_qemu() -> None:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        pytest.skip("qemu-system-x86_64 not installed")
    assert re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?\S*", qemu_version(binary))


def test_find_vmm_binary_configured_then_path(tmp_path: Path) -> None:
    tool = _script(tmp_path, "true")
    assert find_vmm_binary(Path(tool), "no-such-vmm", not_on_path="unused") == tool
    assert find_vmm_binary(None, "sh", not_on_path="unused") == shutil.which("sh")
    missing = tmp_path / "absent"
    with pytest.raises(BackendUnavailable, match="does not exist") as info:
        find_vmm_binary(missing, "sh", not_on_path="unused")
    assert info.value.details == {"missing": str(missing)}
    with pytest.raises(BackendUnavailable, match="install it") as info:
        find_vmm_binary(None, "no-such-vmm-here", not_on_path="install it")
    assert info.value.details == {"missing": "no-such-vmm-here"}


def test_find_vmm_binary_bare_name_is_looked_up_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = _script(tmp_path, "true")
    monkeypatch.setenv("PATH", str(Path(tool).parent))
    name = Path(Path(tool).name)
    assert find_vmm_binary(name, "no-such-vmm", not_on_path="unused") == tool
    monkeypatch.chdir(tmp_path)  # a file of that name in the working directory is not used
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BackendUnavailable, match="not on PATH") as info:
        find_vmm_binary(name, "no-such-vmm", not_on_path="unused")
    assert info.value.details == {"missing": str(name)}
