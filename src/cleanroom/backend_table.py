"""The backends cleanroom knows, in ONE table (bottom layer: names and import strings only).

Each entry names the backend's class and its config section's class as
``"module:Class"`` import strings, so this table (and the runtime config that
asks it which ``backends.<name>`` sections exist) imports no backend code.
Adding a backend touches this table and the backend's own package only: the
package provides the ``Backend`` implementation (constructed with its section)
and the section class (a frozen dataclass with ``KEYS`` and ``parse``).

``auto`` prefers isolation by KVM: it takes the first backend (in table order)
with ``needs_kvm`` whose cached canary verdict proves it usable here
(``cached_usable()``), else the first backend without ``needs_kvm``. Table order
is also the order of ``doctor``'s backend checks.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, Self

from cleanroom._yaml import YamlEntry
from cleanroom.config_reader import SectionReader

__all__ = [
    "BACKENDS",
    "CAPABILITIES",
    "BackendEntry",
    "BackendSettings",
    "backend_names",
    "load_ref",
    "settings_class",
]

CAPABILITIES = frozenset(
    {
        "network_default_deny",
        "network_host_port_filtering",
        "dns_control",
        "policy_immutability",
        "audit_event_emission",
        "needs_kvm",
    }
)
"""What a table entry may promise: the five policy guarantees its guests can enforce
(checked again at launch against the backend's reported ``Capabilities``), and
``needs_kvm`` (usable only where a canary guest boots under KVM)."""

_GUARANTEES = frozenset(CAPABILITIES - {"needs_kvm"})


@dataclass(frozen=True)
class BackendEntry:
    """One row of the table."""

    name: str
    backend: str
    """``"module:Class"`` of the ``cleanroom.backends.base.Backend`` implementation,
    called with the backend's settings (an instance of ``settings``)."""
    settings: str
    """``"module:Class"`` of the ``backends.<name>`` section (see ``BackendSettings``)."""
    capabilities: frozenset[str]

    def __post_init__(self) -> None:
        unknown = self.capabilities - CAPABILITIES
        if unknown:
            raise ValueError(f"backend {self.name}: unknown capabilities {sorted(unknown)}")


class BackendSettings(Protocol):
    """A backend's config section: a frozen dataclass whose defaults are the empty section."""

    KEYS: ClassVar[tuple[str, ...]]
    """The keys the section accepts (any other key is a located config error)."""

    @property
    def launch_seconds(self) -> float:
        """How long a guest may take to become ready (every backend has it)."""
        ...

    @classmethod
    def parse(cls, reader: SectionReader, section: dict[str, YamlEntry], path: str) -> Self:
        """The section from its entries (``path`` is ``backends.<name>``); problems are
        recorded on ``reader`` (invalid values fall back to defaults)."""
        ...


BACKENDS: Mapping[str, BackendEntry] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            BackendEntry(
                name="qemu",
                backend="cleanroom.backends.qemu:QemuBackend",
                settings="cleanroom.backends.qemu.settings:QemuConfig",
                capabilities=_GUARANTEES,
            ),
            BackendEntry(
                name="firecracker",
                backend="cleanroom.backends.firecracker:FirecrackerBackend",
                settings="cleanroom.backends.firecracker.settings:FirecrackerConfig",
                capabilities=_GUARANTEES | {"needs_kvm"},
            ),
        )
    }
)


def backend_names() -> tuple[str, ...]:
    """Every backend's name, in table order."""
    return tuple(BACKENDS)


def load_ref(ref: str) -> Any:
    """The object a ``"module:attribute"`` import string names (``ImportError`` if none)."""
    module, _, attribute = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except AttributeError as exc:
        raise ImportError(f"{module} has no attribute {attribute!r}") from exc


def settings_class(name: str) -> type[BackendSettings]:
    """The config section class of backend ``name`` (``KeyError`` if it is not in the table)."""
    cls: type[BackendSettings] = load_ref(BACKENDS[name].settings)
    return cls
