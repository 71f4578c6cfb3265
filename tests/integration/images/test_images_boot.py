"""Boot the built image under QEMU (TCG): the initramfs reaches the agent, or fails clearly.

Marked ``vm`` and ``image``. The full backend smoke tests live with the
backends; these check what the image builder owns: the initramfs loads the
modules, mounts the rootfs, switches into ``/sbin/cleanroom-init`` (the agent
answers HELLO), and on a missing root device prints its one-line diagnosis
and powers the guest off.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from cleanroom.agent.host import AgentClient
from cleanroom.images import GuestImage

pytestmark = [
    pytest.mark.vm,
    pytest.mark.image,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu"),
]

CHANNEL = "org.cleanroom.agent"


def tsc_khz() -> int:
    """The host TSC frequency in kHz (TCG guests hang at calibration without it)."""
    try:
        text = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    except OSError:
        text = ""
    for line in text.splitlines():
        if "tsc: Detected" in line and "MHz" in line:
            mhz = float(line.split("tsc: Detected", 1)[1].split("MHz", 1)[0])
            return int(mhz * 1000)
    with Path("/proc/cpuinfo").open() as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":", 1)[1]) * 1000)
    return 2_000_000


def qemu_argv(image: GuestImage, rootfs: Path, sock: Path, console: Path, extra: str) -> list[str]:
    return [
        "qemu-system-x86_64",
        "-M",
        "microvm,pit=off,pic=off,isa-serial=on,rtc=on,acpi=on",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "256",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        f"console=ttyS0 tsc_early_khz={tsc_khz()} cleanroom.debug=1 "
        f"cleanroom.channel=virtio-serial:{CHANNEL} {extra}",
        "-drive",
        f"id=root,file={rootfs},format=raw,if=none",
        "-device",
        "virtio-blk-device,drive=root",
        "-device",
        "virtio-serial-device",
        "-chardev",
        f"socket,id=agent,path={sock},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=agent,name={CHANNEL}",
        "-serial",
        f"file:{console}",
    ]


@pytest.fixture
def vm_files(built_image: GuestImage, tmp_path: Path) -> tuple[Path, Path, Path]:
    rootfs = tmp_path / "rootfs.ext4"
    subprocess.run(["cp", "--sparse=always", str(built_image.rootfs), str(rootfs)], check=True)
    return rootfs, tmp_path / "agent.sock", tmp_path / "console.log"


def test_missing_root_device_reports_and_powers_off(
    built_image: GuestImage, vm_files: tuple[Path, Path, Path]
) -> None:
    rootfs, sock, console = vm_files
    argv = qemu_argv(built_image, rootfs, sock, console, "cleanroom.root=/dev/vdz")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=240)  # the guest powers itself off
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    log = console.read_text(errors="replace")
    assert "cleanroom-initramfs: loaded virtio_blk" in log
    assert "cleanroom-initramfs: cannot mount root: /dev/vdz did not appear" in log
    assert proc.returncode == 0


async def test_boots_into_the_agent(
    built_image: GuestImage, vm_files: tuple[Path, Path, Path]
) -> None:
    rootfs, sock, console = vm_files
    argv = qemu_argv(built_image, rootfs, sock, console, "")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        for _ in range(3000):
            if sock.exists():
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        client = AgentClient(reader, writer)
        try:
            info = await client.hello(timeout=180)
        finally:
            await client.close()
        assert info.agent_version == built_image.agent_version
        assert info.kernel == built_image.kernel_version
        assert info.python.startswith("3.11")
        log = console.read_text(errors="replace")
        assert "cleanroom-initramfs: switching root" in log
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
