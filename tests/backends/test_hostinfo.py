"""Host TSC frequency detection (pure parsers plus the real host)."""

from __future__ import annotations

from cleanroom.backends.hostinfo import (
    host_kvm_identity,
    host_tsc_khz,
    parse_cpuinfo_tsc_khz,
    parse_dmesg_tsc_khz,
)

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
