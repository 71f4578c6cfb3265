"""The QEMU command line is a pure function of the launch description."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from cleanroom.backends.base import NetworkAttachment
from cleanroom.backends.qemu.argv import (
    AGENT_PORT_NAME,
    QemuLaunch,
    QemuMachine,
    build_argv,
    kernel_cmdline,
)


def _launch(**kw: Any) -> QemuLaunch:
    base: dict[str, Any] = {
        "binary": "/usr/bin/qemu-system-x86_64",
        "kernel": Path("/img/bzImage"),
        "initrd": Path("/img/initrd"),
        "rootfs": Path("/run/r1/rootfs.qcow2"),
        "rootfs_format": "qcow2",
        "console_log": Path("/run/r1/console.log"),
        "agent_fd": 7,
        "qmp_fd": 6,
        "accel": "tcg",
        "tsc_khz": 2100000,
    }
    base.update(kw)
    machine_keys = {f.name for f in fields(QemuMachine)} - {"rootfs"}
    machine = QemuMachine(
        rootfs=Path("/img/rootfs.ext4"), **{k: v for k, v in base.items() if k in machine_keys}
    )
    return QemuLaunch(machine=machine, **{k: v for k, v in base.items() if k not in machine_keys})


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_tcg_machine_and_devices() -> None:
    argv = build_argv(_launch(), prefix=["setpriv", "--pdeathsig", "KILL", "--"])
    assert argv[:5] == ["setpriv", "--pdeathsig", "KILL", "--", "/usr/bin/qemu-system-x86_64"]
    assert _opt(argv, "-M") == ["microvm,acpi=on,pit=off,pic=off,rtc=on,isa-serial=off"]
    assert _opt(argv, "-accel") == ["tcg,tb-size=32"]
    assert _opt(argv, "-cpu") == ["max"]
    assert _opt(argv, "-m") == ["256"]
    assert _opt(argv, "-smp") == ["1"]
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert _opt(argv, "-display") == ["none"]
    assert "-serial" not in argv
    assert "-monitor" not in argv
    assert _opt(argv, "-kernel") == ["/img/bzImage"]
    assert _opt(argv, "-initrd") == ["/img/initrd"]
    chardevs = _opt(argv, "-chardev")
    assert "socket,id=qmp,fd=6" in chardevs
    assert "socket,id=agent,fd=7" in chardevs
    assert "file,id=console,path=/run/r1/console.log" in chardevs
    assert _opt(argv, "-mon") == ["chardev=qmp,mode=control"]
    devices = _opt(argv, "-device")
    assert "virtconsole,chardev=console" in devices
    assert f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}" in devices
    assert "virtio-blk-device,drive=root" in devices
    assert "virtio-rng-device,rng=rng0" in devices
    assert not any(d.startswith("virtio-net") for d in devices)
    assert _opt(argv, "-drive") == [
        "id=root,file=/run/r1/rootfs.qcow2,format=qcow2,if=none,cache=unsafe"
    ]
    assert "-netdev" not in argv


def test_kernel_cmdline_tcg_has_tsc_and_channel() -> None:
    args = kernel_cmdline(_launch()).split()
    assert "console=hvc0" in args
    assert "tsc_early_khz=2100000" in args
    assert f"cleanroom.channel=virtio-serial:{AGENT_PORT_NAME}" in args
    assert "cleanroom.root=/dev/vda" in args
    assert "panic=-1" in args
    argv = build_argv(_launch())
    assert _opt(argv, "-append") == [kernel_cmdline(_launch())]


def test_kvm_uses_host_cpu_and_no_tsc_hint() -> None:
    launch = _launch(accel="kvm")
    argv = build_argv(launch)
    assert _opt(argv, "-accel") == ["kvm"]
    assert _opt(argv, "-cpu") == ["host,-arch-capabilities"]
    assert not any(a.startswith("tsc_early_khz") for a in kernel_cmdline(launch).split())


def test_network_runs_in_netns_with_tap() -> None:
    net = NetworkAttachment(netns="cr-r1", tap="crtap0", mac="06:00:0a:00:00:02")
    argv = build_argv(_launch(network=net), prefix=["setpriv", "--"])
    assert argv[:7] == [
        "setpriv",
        "--",
        "ip",
        "netns",
        "exec",
        "cr-r1",
        "/usr/bin/qemu-system-x86_64",
    ]
    assert _opt(argv, "-netdev") == ["tap,id=net0,ifname=crtap0,script=no,downscript=no"]
    assert "virtio-net-device,netdev=net0,mac=06:00:0a:00:00:02" in _opt(argv, "-device")


def test_debug_console_on_uart() -> None:
    launch = _launch(debug=True, vcpus=2, memory_mib=512)
    argv = build_argv(launch)
    assert "isa-serial=on" in _opt(argv, "-M")[0]
    assert _opt(argv, "-serial") == ["chardev:console"]
    assert "virtconsole,chardev=console" not in _opt(argv, "-device")
    args = kernel_cmdline(launch).split()
    assert "console=ttyS0" in args
    assert "cleanroom.debug=1" in args
    assert _opt(argv, "-m") == ["512"]
    assert _opt(argv, "-smp") == ["2"]


def test_commas_in_paths_are_escaped() -> None:
    argv = build_argv(_launch(rootfs=Path("/run/a,b/rootfs.raw"), rootfs_format="raw"))
    assert _opt(argv, "-drive") == [
        "id=root,file=/run/a,,b/rootfs.raw,format=raw,if=none,cache=unsafe"
    ]


def test_extra_kernel_args_are_appended_last() -> None:
    args = kernel_cmdline(_launch(extra_kernel_args=("foo=1",))).split()
    assert args[-1] == "foo=1"


def test_direct_boot_without_initrd() -> None:
    launch = _launch(initrd=None)
    argv = build_argv(launch)
    assert "-initrd" not in argv
    args = kernel_cmdline(launch).split()
    assert {"root=/dev/vda", "rootfstype=ext4", "rw", "init=/sbin/cleanroom-init"} <= set(args)
    assert "init=/sbin/cleanroom-init" not in kernel_cmdline(_launch()).split()


def test_user_image_read_only_with_scratch_disk_after_the_others() -> None:
    launch = _launch(
        workspace_disk=Path("/run/r1/workspace.ext4"),
        image_disk=Path("/cache/img/rootfs.ext4"),
        scratch_disk=Path("/run/r1/scratch.ext4"),
    )
    argv = build_argv(launch)
    assert _opt(argv, "-drive") == [
        "id=root,file=/run/r1/rootfs.qcow2,format=qcow2,if=none,cache=unsafe",
        "id=ws,file=/run/r1/workspace.ext4,format=raw,if=none,cache=unsafe",
        "id=image,file=/cache/img/rootfs.ext4,format=raw,if=none,readonly=on",
        "id=scratch,file=/run/r1/scratch.ext4,format=raw,if=none,cache=unsafe",
    ]
    blk = [d for d in _opt(argv, "-device") if d.startswith("virtio-blk")]
    assert blk == [f"virtio-blk-device,drive={d}" for d in ("root", "ws", "image", "scratch")]
    assert "cleanroom.image=1" in kernel_cmdline(launch).split()
    # Without a user image nothing changes.
    plain = build_argv(_launch(workspace_disk=Path("/run/r1/workspace.ext4")))
    assert "cleanroom.image=1" not in " ".join(plain)
    assert len(_opt(plain, "-drive")) == 2
    with pytest.raises(ValueError, match="scratch"):
        build_argv(_launch(image_disk=Path("/cache/img/rootfs.ext4")))
