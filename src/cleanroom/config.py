"""The runtime configuration (``$XDG_CONFIG_HOME/cleanroom/config.yaml``).

Every key is optional; a missing or empty file means all defaults. Parsing is
as strict as for policies: unknown keys, wrong types, duplicate keys, tabs and
syntax errors raise :class:`~cleanroom.errors.ConfigInvalid` whose
``details['problems']`` lists every problem as ``config.yaml:L:C: key.path: message``.

::

    default_backend: auto            # auto | firecracker | qemu
    workspace:
      access: rw                     # rw | ro
    backends:
      firecracker: {binary_path, kernel_image, initrd, rootfs, vcpus, memory_mib,
                    guest_cid, launch_seconds}
      qemu:        {binary_path, kernel_image, initrd, rootfs, vcpus, memory_mib,
                    accel: auto | kvm | tcg, launch_seconds}
    network:
      uplink_netns: NAME             # an existing network namespace; default: the host
      resolvers: [IP, ...]           # upstream DNS; default: the host's /etc/resolv.conf
    pool:
      size: 0                        # warm guests kept ready
    images:
      insecure_registries: [HOST[:PORT], ...]  # plain-HTTP registries besides loopback ones
      allow_override: true           # may a run name another image than its policy's?
      default: null                  # image ref used when a policy names none (null: built-in)
      max: {vcpus: 4, memory_mib: 4096, disk_mib: 16384}   # caps on sandbox.resources

Paths must be absolute (``~`` is expanded). ``binary_path: null`` means look the
VMM up on ``PATH``; image paths ``null`` mean the built guest image. Each
backend reads only its own section.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast

from cleanroom import paths
from cleanroom._yaml import (
    Problems,
    YamlEntry,
    YamlNode,
    join_key,
    parse_yaml,
    read_bool,
    read_choice,
    read_int,
    read_mapping,
    read_number,
    read_sequence,
    read_str,
)
from cleanroom.errors import ConfigInvalid

__all__ = [
    "BackendName",
    "FirecrackerConfig",
    "ImagesConfig",
    "NetworkConfig",
    "PoolConfig",
    "QemuAccel",
    "QemuConfig",
    "RuntimeConfig",
    "WorkspaceAccess",
    "WorkspaceConfig",
    "load_config",
    "parse_config_text",
]

BackendName = Literal["auto", "firecracker", "qemu"]
QemuAccel = Literal["auto", "kvm", "tcg"]
WorkspaceAccess = Literal["rw", "ro"]

_MAX_VCPUS = 32
_MIN_MEMORY_MIB = 32
_MIN_GUEST_CID = 3  # 0-2 are reserved (hypervisor, local, host)
_MAX_GUEST_CID = 0xFFFFFFFE  # 2**32 - 1 is VMADDR_CID_ANY
_MAX_NETNS_NAME = 255


@dataclass(frozen=True)
class FirecrackerConfig:
    """Settings of the Firecracker backend."""

    binary_path: Path | None = None
    kernel_image: Path | None = None
    initrd: Path | None = None
    rootfs: Path | None = None
    vcpus: int = 1
    memory_mib: int = 256
    guest_cid: int = 3
    launch_seconds: float = 60.0


@dataclass(frozen=True)
class QemuConfig:
    """Settings of the QEMU backend."""

    binary_path: Path | None = None
    kernel_image: Path | None = None
    initrd: Path | None = None
    rootfs: Path | None = None
    vcpus: int = 1
    memory_mib: int = 256
    accel: QemuAccel = "auto"
    launch_seconds: float = 60.0


@dataclass(frozen=True)
class NetworkConfig:
    """Where sandboxes' traffic leaves, and which DNS servers answer allowed names."""

    uplink_netns: str | None = None
    resolvers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PoolConfig:
    """The warm pool: how many ready guests to keep."""

    size: int = 0


@dataclass(frozen=True)
class ImagesConfig:
    """User images: registries, overrides, the default image and resource caps."""

    insecure_registries: tuple[str, ...] = ()
    """``host[:port]`` registries that may be plain HTTP (loopback ones always may)."""
    allow_override: bool = True
    default: str | None = None
    """A digest-pinned ref (validated) used when the policy names no image."""
    max_vcpus: int = 4
    max_memory_mib: int = 4096
    max_disk_mib: int = 16384


@dataclass(frozen=True)
class WorkspaceConfig:
    """How the workspace is mounted in the guest by default."""

    access: WorkspaceAccess = "rw"


@dataclass(frozen=True)
class RuntimeConfig:
    """The whole runtime configuration; ``source`` is the file read (``None``: defaults)."""

    default_backend: BackendName = "auto"
    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    firecracker: FirecrackerConfig = field(default_factory=FirecrackerConfig)
    qemu: QemuConfig = field(default_factory=QemuConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    source: Path | None = field(default=None, compare=False)


class _Reader:
    """Walks the located YAML tree, building config values and collecting problems."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems

    def section(
        self, entries: dict[str, YamlEntry], key: str, path: str, allowed: tuple[str, ...]
    ) -> dict[str, YamlEntry]:
        entry = entries.get(key)
        if entry is None:
            return {}
        return read_mapping(entry.value, join_key(path, key), self.problems, allowed=allowed) or {}

    def path_value(self, node: YamlNode, path: str) -> Path | None:
        text = read_str(node, path, self.problems)
        if text is None:
            return None
        candidate = Path(text).expanduser()
        if not candidate.is_absolute():
            self.problems.add(node.mark, path, f"must be an absolute path, got {text!r}")
            return None
        return candidate

    def optional_path(self, entries: dict[str, YamlEntry], key: str, path: str) -> Path | None:
        entry = entries.get(key)
        if entry is None or _is_null(entry.value):
            return None
        return self.path_value(entry.value, join_key(path, key))

    def integer(
        self,
        entries: dict[str, YamlEntry],
        key: str,
        path: str,
        default: int,
        *,
        minimum: int,
        maximum: int | None = None,
    ) -> int:
        entry = entries.get(key)
        if entry is None:
            return default
        value = read_int(
            entry.value, join_key(path, key), self.problems, minimum=minimum, maximum=maximum
        )
        return default if value is None else value

    def seconds(self, entries: dict[str, YamlEntry], key: str, path: str, default: float) -> float:
        entry = entries.get(key)
        if entry is None:
            return default
        value = read_number(entry.value, join_key(path, key), self.problems, exclusive_minimum=0)
        return default if value is None else value

    def choice(
        self,
        entries: dict[str, YamlEntry],
        key: str,
        path: str,
        choices: tuple[str, ...],
        default: str,
    ) -> str:
        entry = entries.get(key)
        if entry is None:
            return default
        value = read_choice(entry.value, join_key(path, key), self.problems, choices)
        return default if value is None else value


def _is_null(node: YamlNode) -> bool:
    return getattr(node, "value", "") is None


_VMM_KEYS = ("binary_path", "kernel_image", "initrd", "rootfs", "vcpus", "memory_mib")


def _read_firecracker(reader: _Reader, entries: dict[str, YamlEntry]) -> FirecrackerConfig:
    path = "backends.firecracker"
    keys = (*_VMM_KEYS, "guest_cid", "launch_seconds")
    section = reader.section(entries, "firecracker", "backends", keys)
    return FirecrackerConfig(
        binary_path=reader.optional_path(section, "binary_path", path),
        kernel_image=reader.optional_path(section, "kernel_image", path),
        initrd=reader.optional_path(section, "initrd", path),
        rootfs=reader.optional_path(section, "rootfs", path),
        vcpus=reader.integer(section, "vcpus", path, 1, minimum=1, maximum=_MAX_VCPUS),
        memory_mib=reader.integer(section, "memory_mib", path, 256, minimum=_MIN_MEMORY_MIB),
        guest_cid=reader.integer(
            section, "guest_cid", path, 3, minimum=_MIN_GUEST_CID, maximum=_MAX_GUEST_CID
        ),
        launch_seconds=reader.seconds(section, "launch_seconds", path, 60.0),
    )


def _read_qemu(reader: _Reader, entries: dict[str, YamlEntry]) -> QemuConfig:
    path = "backends.qemu"
    keys = (*_VMM_KEYS, "accel", "launch_seconds")
    section = reader.section(entries, "qemu", "backends", keys)
    accel = reader.choice(section, "accel", path, ("auto", "kvm", "tcg"), "auto")
    return QemuConfig(
        binary_path=reader.optional_path(section, "binary_path", path),
        kernel_image=reader.optional_path(section, "kernel_image", path),
        initrd=reader.optional_path(section, "initrd", path),
        rootfs=reader.optional_path(section, "rootfs", path),
        vcpus=reader.integer(section, "vcpus", path, 1, minimum=1, maximum=_MAX_VCPUS),
        memory_mib=reader.integer(section, "memory_mib", path, 256, minimum=_MIN_MEMORY_MIB),
        accel=cast(QemuAccel, accel),
        launch_seconds=reader.seconds(section, "launch_seconds", path, 60.0),
    )


def _read_network(reader: _Reader, section: dict[str, YamlEntry]) -> NetworkConfig:
    problems = reader.problems
    uplink: str | None = None
    entry = section.get("uplink_netns")
    if entry is not None and not _is_null(entry.value):
        uplink = read_str(entry.value, "network.uplink_netns", problems)
        if uplink is not None and (
            "/" in uplink or uplink in (".", "..") or len(uplink) > _MAX_NETNS_NAME
        ):
            problems.add(entry.value.mark, "network.uplink_netns", "not a network namespace name")
            uplink = None
    resolvers: tuple[str, ...] | None = None
    entry = section.get("resolvers")
    if entry is not None and not _is_null(entry.value):
        items = read_sequence(entry.value, "network.resolvers", problems)
        if items is not None and not items:
            problems.add(entry.value.mark, "network.resolvers", "must list at least one address")
        elif items is not None:
            found: list[str] = []
            for index, item in enumerate(items):
                item_path = f"network.resolvers[{index}]"
                text = read_str(item, item_path, problems)
                if text is None:
                    continue
                try:
                    found.append(str(ipaddress.ip_address(text.strip())))
                except ValueError:
                    problems.add(item.mark, item_path, f"not an IP address: {text!r}")
            resolvers = tuple(found)
    return NetworkConfig(uplink_netns=uplink, resolvers=resolvers)


def _read_images(reader: _Reader, entries: dict[str, YamlEntry]) -> ImagesConfig:
    # Imported here: the policy package is not needed to read the rest of the config.
    from cleanroom.policy.image import InvalidImageRef, parse_image_ref  # noqa: PLC0415

    problems = reader.problems
    keys = ("insecure_registries", "allow_override", "default", "max")
    section = reader.section(entries, "images", "", keys)
    registries: list[str] = []
    entry = section.get("insecure_registries")
    if entry is not None and not _is_null(entry.value):
        for index, item in enumerate(
            read_sequence(entry.value, "images.insecure_registries", problems) or ()
        ):
            text = read_str(item, f"images.insecure_registries[{index}]", problems)
            if text is not None:
                registries.append(text.strip().lower())
    allow_override = True
    entry = section.get("allow_override")
    if entry is not None:
        value = read_bool(entry.value, "images.allow_override", problems)
        allow_override = True if value is None else value
    default: str | None = None
    entry = section.get("default")
    if entry is not None and not _is_null(entry.value):
        text = read_str(entry.value, "images.default", problems)
        if text is not None:
            try:
                default = str(parse_image_ref(text))
            except InvalidImageRef as exc:
                problems.add(entry.value.mark, "images.default", exc.message)
    caps = reader.section(section, "max", "images", ("vcpus", "memory_mib", "disk_mib"))
    return ImagesConfig(
        insecure_registries=tuple(registries),
        allow_override=allow_override,
        default=default,
        max_vcpus=reader.integer(caps, "vcpus", "images.max", 4, minimum=1, maximum=_MAX_VCPUS),
        max_memory_mib=reader.integer(
            caps, "memory_mib", "images.max", 4096, minimum=_MIN_MEMORY_MIB
        ),
        max_disk_mib=reader.integer(caps, "disk_mib", "images.max", 16384, minimum=64),
    )


def parse_config_text(text: str, source_name: str) -> RuntimeConfig:
    """Parse runtime configuration ``text``; problems name the file ``source_name``.

    Raises :class:`~cleanroom.errors.ConfigInvalid` listing every problem.
    """
    problems = Problems(source_name)
    root = parse_yaml(text, problems)
    problems.raise_if_any(ConfigInvalid, "runtime config")
    if root is None:
        return RuntimeConfig()
    top = ("default_backend", "workspace", "backends", "network", "pool", "images")
    entries = read_mapping(root, "", problems, allowed=top) or {}
    reader = _Reader(problems)
    backend = reader.choice(entries, "default_backend", "", ("auto", "firecracker", "qemu"), "auto")
    workspace = reader.section(entries, "workspace", "", ("access",))
    access = reader.choice(workspace, "access", "workspace", ("rw", "ro"), "rw")
    backends = reader.section(entries, "backends", "", ("firecracker", "qemu"))
    firecracker = _read_firecracker(reader, backends)
    qemu = _read_qemu(reader, backends)
    network = _read_network(
        reader, reader.section(entries, "network", "", ("uplink_netns", "resolvers"))
    )
    pool = reader.section(entries, "pool", "", ("size",))
    size = reader.integer(pool, "size", "pool", 0, minimum=0)
    images = _read_images(reader, entries)
    problems.raise_if_any(ConfigInvalid, "runtime config")
    return RuntimeConfig(
        default_backend=cast(BackendName, backend),
        workspace=WorkspaceConfig(access=cast(WorkspaceAccess, access)),
        firecracker=firecracker,
        qemu=qemu,
        network=network,
        pool=PoolConfig(size=size),
        images=images,
    )


def load_config(path: Path | None = None) -> RuntimeConfig:
    """Read the runtime configuration from ``path`` (default :func:`cleanroom.paths.config_file`).

    A missing or empty file gives all defaults. Raises ``ConfigInvalid``.
    """
    target = paths.config_file() if path is None else path
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        return RuntimeConfig()
    except OSError as exc:
        raise ConfigInvalid(
            f"cannot read runtime config {target}: {exc.strerror or exc}",
            details={"source": str(target), "problems": [f"{target}:1:1: cannot read the file"]},
        ) from exc
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ConfigInvalid(
            f"runtime config {target} is not UTF-8",
            details={
                "source": str(target),
                "problems": [f"{target}:1:1: not valid UTF-8 (byte offset {exc.start})"],
            },
        ) from exc
    return replace(parse_config_text(text, target.name), source=target)
