"""Backend resolution and construction from the runtime config."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from cleanroom.backends import (
    KNOWN_BACKENDS,
    FirecrackerBackend,
    QemuBackend,
    get_backend,
    resolve_backend_name,
)
from cleanroom.config import FirecrackerConfig, RuntimeConfig
from cleanroom.errors import BackendUnavailable, InvalidRequest


def test_known_backends() -> None:
    assert set(KNOWN_BACKENDS) == {"qemu", "firecracker"}


def test_explicit_request_wins() -> None:
    config = RuntimeConfig(default_backend="firecracker")
    assert resolve_backend_name("qemu", config) == "qemu"
    assert resolve_backend_name(None, config) == "firecracker"
    assert resolve_backend_name("firecracker", RuntimeConfig(default_backend="qemu")) == (
        "firecracker"
    )


def test_unknown_name_is_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        resolve_backend_name("gvisor", RuntimeConfig())
    with pytest.raises(InvalidRequest):
        get_backend("bochs", RuntimeConfig())  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("firecracker") is not None, reason="firecracker is installed")
def test_auto_without_firecracker_is_qemu() -> None:
    assert resolve_backend_name(None, RuntimeConfig()) == "qemu"
    assert resolve_backend_name("auto", RuntimeConfig(default_backend="firecracker")) == "qemu"


def test_auto_with_configured_but_missing_binary_is_qemu(tmp_path: Path) -> None:
    config = dataclasses.replace(
        RuntimeConfig(), firecracker=FirecrackerConfig(binary_path=tmp_path / "firecracker")
    )
    assert resolve_backend_name("auto", config) == "qemu"


def test_get_backend_types() -> None:
    assert isinstance(get_backend("qemu", RuntimeConfig()), QemuBackend)
    assert isinstance(get_backend("firecracker", RuntimeConfig()), FirecrackerBackend)


async def test_firecracker_prepare_names_missing_binary(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "firecracker"
    backend = FirecrackerBackend(FirecrackerConfig(binary_path=missing))
    with pytest.raises(BackendUnavailable) as info:
        await backend.prepare()
    assert str(missing) in info.value.message
    assert info.value.details["missing"] == str(missing)


@pytest.mark.skipif(shutil.which("firecracker") is not None, reason="firecracker is installed")
async def test_firecracker_prepare_without_binary_on_path() -> None:
    with pytest.raises(BackendUnavailable, match="not on PATH") as info:
        await FirecrackerBackend(FirecrackerConfig()).prepare()
    assert info.value.details["missing"] == "firecracker"


async def test_firecracker_doctor_reports_each_part() -> None:
    checks = await FirecrackerBackend(FirecrackerConfig()).doctor()
    names = {c.name for c in checks}
    assert {"firecracker.binary", "firecracker.kvm"} <= names
    assert names & {"firecracker.kernel", "firecracker.image"}
