"""Firecracker config bodies are checked against Firecracker's published API definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cleanroom.backends.base import NetworkAttachment
from cleanroom.backends.firecracker.config import (
    AGENT_VSOCK_PORT,
    API_SOCKET_NAME,
    CONFIG_FILE_NAME,
    VSOCK_SOCKET_NAME,
    FirecrackerLaunch,
    boot_args,
    build_argv,
    build_config,
)

SCHEMA_PATH = Path(__file__).parent / "data" / "firecracker_api_v1.17.json"
CONFIG_FILE_KEYS = {
    "balloon",
    "drives",
    "boot-source",
    "cpu-config",
    "logger",
    "machine-config",
    "metrics",
    "memory-hotplug",
    "mmds-config",
    "network-interfaces",
    "pmem",
    "vsock",
    "entropy",
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _launch(**kw: Any) -> FirecrackerLaunch:
    base: dict[str, Any] = {
        "vmlinux": Path("/img/vmlinux"),
        "initrd": Path("/img/initrd"),
        "rootfs": Path("/run/x/rootfs.raw"),
    }
    base.update(kw)
    return FirecrackerLaunch(**base)


NET = NetworkAttachment(netns="cr-run1", tap="tap0", mac="06:00:ac:10:00:02")


@pytest.mark.parametrize(
    "launch",
    [
        _launch(),
        _launch(network=NET, vcpus=2, memory_mib=512, guest_cid=7),
        _launch(debug=True),
        _launch(
            workspace_disk=Path("/run/x/workspace.ext4"),
            image_disk=Path("/cache/img/rootfs.ext4"),
            scratch_disk=Path("/run/x/scratch.ext4"),
        ),
    ],
    ids=["plain", "networked", "debug", "user-image"],
)
def test_config_validates_against_firecracker_api(
    validator: jsonschema.Draft202012Validator, launch: FirecrackerLaunch
) -> None:
    config = build_config(launch)
    errors = sorted(validator.iter_errors(config), key=str)
    assert errors == []
    assert set(config) <= CONFIG_FILE_KEYS
    # JSON round trip: what is written to the file is what was validated.
    assert json.loads(json.dumps(config)) == config


def test_schema_rejects_what_firecracker_rejects(
    validator: jsonschema.Draft202012Validator,
) -> None:
    # The schema must be able to fail, or the test above proves nothing.
    config = build_config(_launch())
    config["machine-config"]["vcpus"] = 1  # unknown field name
    assert list(validator.iter_errors(config))
    config = build_config(_launch())
    del config["drives"][0]["is_root_device"]
    assert list(validator.iter_errors(config))
    config = build_config(_launch(guest_cid=2))  # CIDs 0-2 are reserved
    assert list(validator.iter_errors(config))
    config = build_config(_launch())
    config["drives"][0]["cache_type"] = "unsafe"
    assert list(validator.iter_errors(config))


def test_config_contents() -> None:
    config = build_config(_launch(network=NET, vcpus=2, memory_mib=512, guest_cid=9))
    assert config["boot-source"]["kernel_image_path"] == "/img/vmlinux"
    assert config["boot-source"]["initrd_path"] == "/img/initrd"
    (drive,) = config["drives"]
    assert drive["path_on_host"] == "/run/x/rootfs.raw"
    assert drive["is_root_device"] is True
    assert drive["is_read_only"] is False
    assert config["machine-config"] == {"vcpu_count": 2, "mem_size_mib": 512, "smt": False}
    assert config["vsock"] == {"guest_cid": 9, "uds_path": VSOCK_SOCKET_NAME}
    assert config["network-interfaces"] == [
        {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}
    ]
    assert "entropy" in config
    assert "network-interfaces" not in build_config(_launch())


def test_boot_args() -> None:
    args = boot_args(_launch()).split()
    assert args[0] == "console=ttyS0"
    assert f"cleanroom.channel=vsock:{AGENT_VSOCK_PORT}" in args
    assert "cleanroom.root=/dev/vda" in args
    assert "reboot=k" in args
    assert "cleanroom.debug=1" in boot_args(_launch(debug=True)).split()


def test_argv_plain_and_in_netns() -> None:
    assert build_argv("/usr/bin/firecracker", None, ["setpriv", "--pdeathsig", "KILL", "--"]) == [
        "setpriv",
        "--pdeathsig",
        "KILL",
        "--",
        "/usr/bin/firecracker",
        "--api-sock",
        API_SOCKET_NAME,
        "--config-file",
        CONFIG_FILE_NAME,
    ]
    argv = build_argv("firecracker", NET)
    assert argv[:5] == ["ip", "netns", "exec", "cr-run1", "firecracker"]


def test_direct_boot_config_validates(validator: jsonschema.Draft202012Validator) -> None:
    config = build_config(_launch(initrd=None))
    assert sorted(validator.iter_errors(config), key=str) == []
    assert "initrd_path" not in config["boot-source"]
    assert "init=/sbin/cleanroom-init" in config["boot-source"]["boot_args"].split()
    assert "init=/sbin/cleanroom-init" not in boot_args(_launch()).split()


def test_user_image_drive_is_read_only() -> None:
    launch = _launch(
        workspace_disk=Path("/run/x/workspace.ext4"),
        image_disk=Path("/cache/img/rootfs.ext4"),
        scratch_disk=Path("/run/x/scratch.ext4"),
    )
    drives = {d["drive_id"]: d for d in build_config(launch)["drives"]}
    assert list(drives) == ["rootfs", "workspace", "image", "scratch"]
    assert drives["image"]["path_on_host"] == "/cache/img/rootfs.ext4"
    assert drives["image"]["is_read_only"] is True
    assert drives["scratch"]["is_read_only"] is False
    assert "cleanroom.image=1" in boot_args(launch).split()
    assert "cleanroom.image=1" not in boot_args(_launch()).split()
    with pytest.raises(ValueError, match="scratch"):
        build_config(_launch(image_disk=Path("/cache/img/rootfs.ext4")))
