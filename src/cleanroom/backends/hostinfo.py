"""Facts about the host that VMM command lines depend on (TSC frequency, KVM,
the VMM binary and its version).

Parsing is pure (``parse_*`` take text); reading the host is cached per process
because the answers do not change while the server runs.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from cleanroom.errors import BackendUnavailable

__all__ = [
    "find_vmm_binary",
    "host_kvm_identity",
    "host_tsc_khz",
    "parse_cpuinfo_tsc_khz",
    "parse_dmesg_tsc_khz",
    "vmm_version",
]

KVM_DEVICE = Path("/dev/kvm")

_REFINED = re.compile(r"Refined TSC clocksource calibration:\s*([0-9]+(?:\.[0-9]+)?)\s*MHz")
_DETECTED = re.compile(r"tsc:\s*Detected\s*([0-9]+(?:\.[0-9]+)?)\s*MHz")
_CPU_MHZ = re.compile(r"^cpu MHz\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*$", re.MULTILINE)


def _mhz_to_khz(text: str) -> int:
    return round(float(text) * 1000)


def parse_dmesg_tsc_khz(text: str) -> int | None:
    """The TSC frequency in kHz from kernel log text, or None.

    The refined calibration wins over the early "Detected" estimate because it
    is the value the host kernel finally uses; the last occurrence wins.
    """
    for pattern in (_REFINED, _DETECTED):
        found = pattern.findall(text)
        if found:
            return _mhz_to_khz(found[-1])
    return None


def parse_cpuinfo_tsc_khz(text: str) -> int | None:
    """The first CPU's ``cpu MHz`` from /proc/cpuinfo text in kHz, or None.

    Only a fallback: with frequency scaling this is the current clock, not the TSC.
    """
    found = _CPU_MHZ.search(text)
    return _mhz_to_khz(found.group(1)) if found else None


def _read_dmesg() -> str:
    try:
        done = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


@functools.cache
def host_tsc_khz() -> int | None:
    """The host TSC frequency in kHz (sysfs, then kernel log, then cpuinfo), or None.

    Guests under TCG need it as ``tsc_early_khz``: without it their clock
    calibration can hang.
    """
    sysfs = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
    try:
        return int(sysfs.read_text().strip())
    except (OSError, ValueError):
        pass
    from_log = parse_dmesg_tsc_khz(_read_dmesg())
    if from_log:
        return from_log
    try:
        return parse_cpuinfo_tsc_khz(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def host_kvm_identity() -> str | None:
    """A string identifying this host's KVM (kernel release + /dev/kvm device), or None
    when /dev/kvm is absent or not accessible read-write.

    Used as a cache key: a verdict about KVM holds until the kernel or device changes.
    """
    try:
        st = KVM_DEVICE.stat()
    except OSError:
        return None
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return None
    return f"{platform.release()}|kvm:{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def vmm_version(binary: str, pattern: re.Pattern[str]) -> str:
    """Group 1 of ``pattern`` searched in ``binary --version``'s stdout, then stderr.

    Raises ``BackendUnavailable`` (details: ``binary``) if the binary cannot be
    run, exits non-zero, or prints nothing that matches.
    """
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendUnavailable(
            f"cannot run {binary} --version: {exc}", details={"binary": binary}
        ) from exc
    found = pattern.search(done.stdout) or pattern.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise BackendUnavailable(
            f"{binary} --version failed: {done.stderr.strip() or done.stdout.strip()}",
            details={"binary": binary},
        )
    return found.group(1)


def find_vmm_binary(configured: Path | None, default: str, *, not_on_path: str) -> str:
    """``configured`` if set (a path must exist; a bare command name is looked up
    on PATH), else ``default`` looked up on PATH.

    Raises ``BackendUnavailable`` with ``details['missing']`` naming the path or
    program; ``not_on_path`` is the message when the PATH lookup of ``default`` fails.
    """
    if configured is not None and not configured.is_absolute() and len(configured.parts) == 1:
        found = shutil.which(str(configured))
        if found is None:
            raise BackendUnavailable(
                f"configured {default} binary {str(configured)!r} is not on PATH",
                details={"missing": str(configured)},
            )
        return found
    if configured is not None:
        if not configured.is_file():
            raise BackendUnavailable(
                f"configured {default} binary {configured} does not exist",
                details={"missing": str(configured)},
            )
        return str(configured)
    found = shutil.which(default)
    if found is None:
        raise BackendUnavailable(not_on_path, details={"missing": default})
    return found
