"""The Firecracker backend end to end: runs only where firecracker and KVM boot a guest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from backend_guest_scenarios import commands_and_discarded_writes, launch_deadline_too_short

from cleanroom.backends.firecracker import FirecrackerBackend, FirecrackerConfig
from cleanroom.backends.verdicts import VerdictCache
from cleanroom.errors import BackendUnavailable
from cleanroom.images import GuestImage, ensure_image

pytestmark = [
    pytest.mark.vm,
    pytest.mark.image,
    pytest.mark.skipif(shutil.which("firecracker") is None, reason="firecracker is not on PATH"),
]


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return ensure_image()


async def _backend(image: GuestImage, tmp_path: Path) -> FirecrackerBackend:
    config = FirecrackerConfig(kernel_image=image.vmlinux, initrd=image.initrd, rootfs=image.rootfs)
    backend = FirecrackerBackend(config, verdicts=VerdictCache(tmp_path / "verdicts.json"))
    try:
        caps = await backend.prepare()  # includes the canary boot
    except BackendUnavailable as exc:
        pytest.skip(f"firecracker cannot boot a guest here: {exc.message}")
    assert caps.isolation == "firecracker-kvm"
    return backend


class TestFirecrackerGuests:
    async def test_commands_signals_and_discarded_writes(
        self, image: GuestImage, tmp_path: Path
    ) -> None:
        await commands_and_discarded_writes(await _backend(image, tmp_path), tmp_path)

    async def test_launch_deadline_too_short(self, image: GuestImage, tmp_path: Path) -> None:
        await launch_deadline_too_short(await _backend(image, tmp_path), tmp_path)
