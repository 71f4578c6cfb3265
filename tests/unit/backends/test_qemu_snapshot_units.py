"""Which runs a QEMU snapshot fits, and what its key covers (no guests)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from cleanroom.backends.base import GuestSpec, NoRestore
from cleanroom.backends.qemu import snapshots as snapshots_module
from cleanroom.backends.qemu.argv import QemuMachine
from cleanroom.backends.qemu.snapshot import SNAPSHOT_KERNEL_ARG, snapshot_facts, snapshot_machine
from cleanroom.backends.qemu.snapshots import Snapshots
from cleanroom.errors import RuntimeLaunchFailed
from cleanroom.images.snapshots import Snapshot, SnapshotCache, snapshot_key
from cleanroom.images.userimage import ImageConfig, UserImage
from cleanroom.netspec import NetworkAttachment

MACHINE = QemuMachine(
    binary="/usr/bin/qemu-system-x86_64",
    kernel=Path("/img/bzImage"),
    initrd=Path("/img/initrd"),
    rootfs=Path("/img/rootfs.ext4"),
    accel="tcg",
    vcpus=1,
    memory_mib=256,
    tsc_khz=2_000_000,
)
VERSIONS = {
    "qemu_version": "7.2.22",
    "image_digest": "ab" * 32,
    "agent_version": "0.2.0",
    "kernel_version": "6.1.0",
}


def _facts(
    machine: QemuMachine = MACHINE, changes: dict[str, str] | None = None
) -> dict[str, str | int | bool | None]:
    v = {**VERSIONS, **(changes or {})}
    return snapshot_facts(
        machine,
        qemu_version=v["qemu_version"],
        image_digest=v["image_digest"],
        agent_version=v["agent_version"],
        kernel_version=v["kernel_version"],
    )


def _key(machine: QemuMachine = MACHINE, changes: dict[str, str] | None = None) -> str:
    return snapshot_key(_facts(machine, changes))


def test_the_key_covers_versions_shape_devices_and_accel() -> None:
    base = _key()
    assert _key() == base
    for name in VERSIONS:
        assert _key(changes={name: "other"}) != base, name
    for changed in (
        replace(MACHINE, memory_mib=512),
        replace(MACHINE, vcpus=2),
        replace(MACHINE, accel="kvm"),
        replace(MACHINE, kernel=Path("/other/bzImage")),
        replace(MACHINE, extra_kernel_args=("loglevel=3",)),
        replace(MACHINE, debug=True),
    ):
        assert _key(changed) != base, changed
    facts = _facts()
    assert "vmgenid,guid=auto" in str(facts["devices"])
    assert SNAPSHOT_KERNEL_ARG in str(facts["devices"])
    # Restored guests map the snapshot's RAM file privately.
    assert "memory-backend-file,id=ram0,size=256M,mem-path=@ram,share=off" in str(facts["devices"])
    # ... as a sealed memfd, whether QEMU runs unprivileged or not (same snapshot).
    assert facts["ram"] == "sealed-memfd"
    assert _facts(replace(MACHINE, unprivileged=True)) == facts
    assert snapshot_machine(snapshot_machine(MACHINE)) == snapshot_machine(MACHINE)


def test_which_runs_fit(tmp_path: Path) -> None:
    snaps = Snapshots(
        MACHINE,
        SnapshotCache(tmp_path),
        boot_seconds=60,
        qemu_version="7.2.22",
        image_digest="ab" * 32,
        agent_version="0.2.0",
        kernel_version="6.1.0",
    )
    spec = GuestSpec("r1", tmp_path, 60)
    assert snaps.unfit(spec) is None
    assert snaps.unfit(replace(spec, vcpus=1, memory_mib=256, disk_mib=16384)) is None
    net = NetworkAttachment(netns="ns", tap="tap0", mac="02:00:00:00:00:01")
    image = UserImage(
        key="sha256:" + "cd" * 32,
        source="docker.io/library/alpine",
        rootfs=tmp_path / "rootfs.ext4",
        config=ImageConfig(),
        size_bytes=1 << 20,
    )
    # A networked run fits too: it is restored from the snapshot with a NIC.
    assert snaps.unfit(replace(spec, network=net)) is None
    # So does another workspace disk size: the guest is told its disk's size.
    assert snaps.unfit(replace(spec, disk_mib=1024)) is None
    assert snaps.key_for(nic=False) == snaps.key != snaps.key_for(nic=True)
    for changed, why in (
        (replace(spec, image=image), "another image"),
        (replace(spec, vcpus=2), "vCPU"),
        (replace(spec, memory_mib=512), "memory"),
    ):
        reason = snaps.unfit(changed)
        assert reason is not None
        assert why in reason


def test_a_user_images_snapshots_fit_its_runs_and_key_its_file(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(b"\0" * 4096)
    image = UserImage(
        key="sha256:" + "cd" * 32,
        source="127.0.0.1:5000/tools@sha256:" + "cd" * 32,
        rootfs=rootfs,
        config=ImageConfig(env=(("PATH", "/bin"),)),
        size_bytes=4096,
    )

    def snaps_of(img: UserImage | None) -> Snapshots:
        return Snapshots(
            MACHINE,
            SnapshotCache(tmp_path / "snapshots"),
            boot_seconds=60,
            image=img,
            **VERSIONS,
        )

    snaps = snaps_of(image)
    spec = GuestSpec("r1", tmp_path, 60, image=image)
    assert snaps.unfit(spec) is None
    assert snaps.unfit(replace(spec, disk_mib=16384)) is None
    assert snaps.unfit(replace(spec, image=None)) is not None
    assert snaps_of(None).unfit(spec) is not None
    # Its scratch disk (the image's writable layer) is the snapshot's, of its size.
    reason = snaps.unfit(replace(spec, disk_mib=1024))
    assert reason is not None
    assert "disk size" in reason
    facts = snaps.facts
    assert facts["user_image"] == image.key
    assert "cleanroom.image=1" in str(facts["devices"])
    assert "id=image,file=@image" in str(facts["devices"])
    assert "id=scratch,file=@scratch" in str(facts["devices"])
    base = snaps.key
    assert base != snaps_of(None).key
    # Another image, other settings, or the file rewritten: another key.
    assert snaps_of(replace(image, key="sha256:" + "ef" * 32)).key != base
    assert snaps_of(replace(image, config=ImageConfig(user="nobody"))).key != base
    rootfs.write_bytes(b"\1" * 8192)
    assert snaps_of(image).key != base
    rootfs.unlink()
    with pytest.raises(FileNotFoundError):
        snaps_of(image)


async def test_a_failed_background_attempt_is_retried_only_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[str] = []
    release = asyncio.Event()  # the attempt fails only once the test has looked

    async def failing_make(*args: object, nic: bool, image: object) -> Snapshot:
        attempts.append("boot")
        await release.wait()
        raise RuntimeLaunchFailed("guest agent not ready within 60 s")

    monkeypatch.setattr(snapshots_module, "make_snapshot", failing_make)
    snaps = Snapshots(
        MACHINE,
        SnapshotCache(tmp_path),
        boot_seconds=60,
        qemu_version="7.2.22",
        image_digest="ab" * 32,
        agent_version="0.2.0",
        kernel_version="6.1.0",
    )
    first = await snaps.find()
    assert isinstance(first, NoRestore)
    assert first.reason.endswith("making it now")
    assert (await snaps.find()).reason.endswith("it is being made")  # type: ignore[union-attr]
    release.set()
    for _ in range(100):  # let the background attempt end, however busy the host
        await asyncio.sleep(0.01)
        if "failed" in getattr(await snaps.find(), "reason", ""):
            break
    failed = await snaps.find()
    assert isinstance(failed, NoRestore)
    assert failed.reason.endswith("making it failed: guest agent not ready within 60 s")
    assert attempts == ["boot"]
    monkeypatch.setattr(snapshots_module, "RETRY_SECONDS", 0.0)
    again = await snaps.find()
    assert isinstance(again, NoRestore)
    assert again.reason.endswith("making it now")
    # The networked snapshot is a separate attempt with its own reason.
    networked = await snaps.find(nic=True)
    assert isinstance(networked, NoRestore)
    assert networked.reason.endswith("making it now")
    await snaps.close()


def test_the_networked_snapshot_puts_its_nic_where_a_run_guest_has_it() -> None:
    plain = str(_facts()["devices"])
    facts = snapshot_facts(
        MACHINE,
        qemu_version=VERSIONS["qemu_version"],
        image_digest=VERSIONS["image_digest"],
        agent_version=VERSIONS["agent_version"],
        kernel_version=VERSIONS["kernel_version"],
        nic=True,
    )
    devices = str(facts["devices"])
    assert facts["nic"] is True
    assert "virtio-net-device" not in plain
    assert "netdev=net0,mac=02:00:00:00:00:01" in devices
    # The NIC is the last device before vmgenid, in the snapshot and a run guest alike.
    assert devices.index("virtio-rng-device") < devices.index("virtio-net-device")
    assert devices.index("virtio-net-device") < devices.index("vmgenid")
    assert snapshot_key(facts) != _key()
