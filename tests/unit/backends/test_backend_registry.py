"""Backend resolution and construction from the runtime config."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import pytest

from cleanroom import backend_table
from cleanroom._yaml import YamlEntry
from cleanroom.backend_table import BACKENDS, BackendEntry, load_ref, settings_class
from cleanroom.backends import (
    KNOWN_BACKENDS,
    Capabilities,
    FirecrackerBackend,
    QemuBackend,
    get_backend,
    resolve_backend_name,
)
from cleanroom.backends.firecracker import FirecrackerConfig
from cleanroom.backends.qemu import QemuConfig
from cleanroom.backends.vmsettings import VMM_KEYS, VmmSettings
from cleanroom.config import RuntimeConfig, parse_config_text
from cleanroom.config_reader import SectionReader
from cleanroom.errors import BackendUnavailable, ConfigInvalid, InvalidRequest


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
        get_backend("bochs", RuntimeConfig())


@pytest.mark.skipif(shutil.which("firecracker") is not None, reason="firecracker is installed")
def test_auto_without_firecracker_is_qemu() -> None:
    assert resolve_backend_name(None, RuntimeConfig()) == "qemu"
    assert resolve_backend_name("auto", RuntimeConfig(default_backend="firecracker")) == "qemu"


def test_auto_with_configured_but_missing_binary_is_qemu(tmp_path: Path) -> None:
    config = RuntimeConfig(firecracker=FirecrackerConfig(binary_path=tmp_path / "firecracker"))
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


# -- one table: a backend added to it (and its own module) is configured and built ----


@dataclass(frozen=True)
class ToySettings(VmmSettings):
    """A backend's own section: the shared VMM keys plus one of its own."""

    flavour: str = "plain"

    KEYS: ClassVar[tuple[str, ...]] = (*VMM_KEYS, "flavour")

    @classmethod
    def _own_fields(
        cls, reader: SectionReader, section: dict[str, YamlEntry], path: str
    ) -> dict[str, Any]:
        return {"flavour": reader.choice(section, "flavour", path, ("plain", "spicy"), "plain")}


class ToyBackend:
    """Only what the table's users touch (construction and the auto probe)."""

    name = "toy"
    usable = False

    def __init__(self, settings: ToySettings) -> None:
        self.settings = settings

    def cached_usable(self) -> bool:
        return self.usable


TOY = BackendEntry(
    name="toy",
    backend=f"{__name__}:ToyBackend",
    settings=f"{__name__}:ToySettings",
    capabilities=frozenset({"needs_kvm", "dns_control"}),
)


@pytest.fixture
def toy_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        backend_table, "BACKENDS", MappingProxyType({**backend_table.BACKENDS, "toy": TOY})
    )


@pytest.mark.usefixtures("toy_table")
def test_a_backend_added_to_the_table_is_configured_and_built() -> None:
    text = "default_backend: toy\nbackends:\n  toy:\n    flavour: spicy\n    vcpus: 2\n"
    config = parse_config_text(text, "config.yaml")
    assert config.backends["toy"] == ToySettings(flavour="spicy", vcpus=2)
    assert config.toy is config.backends["toy"]
    assert config.backends["qemu"] == RuntimeConfig().qemu
    assert resolve_backend_name(None, config) == "toy"
    built = get_backend("toy", config)
    assert isinstance(built, ToyBackend)
    assert built.settings == ToySettings(flavour="spicy", vcpus=2)
    with pytest.raises(ConfigInvalid) as info:
        parse_config_text("backends:\n  toy:\n    accel: tcg\n", "config.yaml")
    assert [p.split(": ")[:2] for p in info.value.details["problems"]] == [
        ["config.yaml:3:5", "backends.toy.accel"]
    ]


@pytest.mark.usefixtures("toy_table")
def test_auto_takes_a_needs_kvm_backend_only_when_proven(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FirecrackerBackend, "cached_usable", lambda self: False)
    assert resolve_backend_name("auto", RuntimeConfig()) == "qemu"
    monkeypatch.setattr(ToyBackend, "usable", True)
    assert resolve_backend_name("auto", RuntimeConfig()) == "toy"


def test_table_entries_name_known_capabilities() -> None:
    with pytest.raises(ValueError, match="unknown capabilities"):
        BackendEntry("x", "m:C", "m:S", frozenset({"teleport"}))
    for name, entry in BACKENDS.items():
        assert entry.name == name
        assert isinstance(get_backend(name, RuntimeConfig()), load_ref(entry.backend))
        assert isinstance(RuntimeConfig().backends[name], settings_class(name))


@pytest.mark.parametrize(
    ("backend", "isolation"),
    [(QemuBackend(QemuConfig()), "qemu-tcg"), (FirecrackerBackend(FirecrackerConfig()), "fc")],
)
def test_reported_capabilities_are_the_table_promises(
    backend: QemuBackend | FirecrackerBackend, isolation: str
) -> None:
    caps = backend._capabilities("1.0", isolation)
    assert caps == Capabilities(
        backend_name=backend.name,
        backend_version="1.0",
        isolation=isolation,
        network_default_deny=True,
        network_host_port_filtering=True,
        dns_control=True,
        policy_immutability=True,
        audit_event_emission=True,
    )
