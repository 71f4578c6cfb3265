"""The original project's documented runtime config works verbatim.

Each key's effect is checked on what would be sent to Firecracker (its config
file body, validated against Firecracker's API definitions, and its argv);
the files it names need not exist for that, only to boot.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
from test_firecracker_config import SCHEMA_PATH

from cleanroom.backends import get_backend, resolve_backend_name
from cleanroom.backends.firecracker import FirecrackerBackend, FirecrackerConfig
from cleanroom.backends.firecracker.config import VSOCK_SOCKET_NAME, build_argv, build_config
from cleanroom.backends.images import DIRECT_BOOT_ARGS, configured_boot, resolve_image
from cleanroom.config import RuntimeConfig, parse_config_text
from cleanroom.errors import BackendUnavailable, ImageUnavailable

ORIGINAL = """\
default_backend: firecracker
workspace:
  access: rw
backends:
  firecracker:
    binary_path: firecracker
    kernel_image: /opt/cleanroom/vmlinux
    rootfs: /opt/cleanroom/rootfs.ext4
    vcpus: 2
    memory_mib: 1024
    guest_cid: 3
    launch_seconds: 30
"""


@pytest.fixture
def config() -> RuntimeConfig:
    return parse_config_text(ORIGINAL, "config.yaml")


@pytest.fixture
def fake_firecracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A program named ``firecracker``, alone on PATH (it is never started here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "firecracker"
    program.write_text("#!/bin/sh\necho 'Firecracker v1.7.0'\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return program


def test_top_level_keys(config: RuntimeConfig) -> None:
    assert resolve_backend_name(None, config) == "firecracker"
    assert config.workspace.access == "rw"
    section = config.backends["firecracker"]
    assert isinstance(section, FirecrackerConfig)
    assert isinstance(get_backend("firecracker", config), FirecrackerBackend)
    # The deadline each guest gets to boot and greet (the service reads this field).
    assert section.launch_seconds == 30.0


def test_what_firecracker_would_be_sent(config: RuntimeConfig, fake_firecracker: Path) -> None:
    section: FirecrackerConfig = config.firecracker
    backend = FirecrackerBackend(section)
    binary = backend.find_binary()  # the bare name, found on PATH
    assert binary == str(fake_firecracker)
    boot = configured_boot(
        "firecracker", section.kernel_image, section.initrd, section.rootfs, section.kernel_image
    )
    assert boot is not None
    assert boot.boot == "direct"  # no initrd: the kernel boots the rootfs itself
    machine = backend.machine_for(binary, boot)
    assert machine.launch.rootfs == Path("/opt/cleanroom/rootfs.ext4")  # the base each run copies
    run_copy = Path("/run/dir/rootfs.raw")
    launch = replace(machine.launch, rootfs=run_copy)
    body = build_config(launch)

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    assert sorted(validator.iter_errors(body), key=str) == []
    assert body["machine-config"] == {"vcpu_count": 2, "mem_size_mib": 1024, "smt": False}
    assert body["vsock"] == {"guest_cid": 3, "uds_path": VSOCK_SOCKET_NAME}
    source = body["boot-source"]
    assert source["kernel_image_path"] == "/opt/cleanroom/vmlinux"
    assert "initrd_path" not in source
    args = source["boot_args"].split()
    for arg in DIRECT_BOOT_ARGS:
        assert arg in args
    assert body["drives"] == [
        {
            "drive_id": "rootfs",
            "path_on_host": str(run_copy),
            "is_root_device": True,
            "is_read_only": False,
            "cache_type": "Unsafe",
        }
    ]
    argv = build_argv(machine.binary, None)
    assert argv[0] == str(fake_firecracker)  # the resolved path goes into the plan


async def test_missing_command_is_backend_unavailable_at_run_time(
    config: RuntimeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    backend = FirecrackerBackend(config.firecracker)
    with pytest.raises(BackendUnavailable, match="not on PATH") as info:
        await backend.prepare()
    assert info.value.details["missing"] == "firecracker"


def test_missing_files_are_image_unavailable_naming_them() -> None:
    section = parse_config_text(ORIGINAL, "config.yaml").firecracker
    with pytest.raises(ImageUnavailable) as info:
        resolve_image("firecracker", section.kernel_image, None, section.rootfs)
    assert info.value.details["file"] in ("/opt/cleanroom/vmlinux", "/opt/cleanroom/rootfs.ext4")


async def test_doctor_names_the_boot_path(tmp_path: Path, fake_firecracker: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF" + bytes(60))
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(bytes(4096))
    text = ORIGINAL.replace("/opt/cleanroom", str(tmp_path))
    backend = FirecrackerBackend(parse_config_text(text, "config.yaml").firecracker)
    checks = {c.name: c for c in await backend.doctor()}
    assert checks["firecracker.binary"].reason == f"{fake_firecracker} 1.7.0"
    boot = checks["firecracker.boot"]
    assert boot.details == {"boot": "direct"}
    assert "/sbin/cleanroom-init" in boot.reason
