"""The runtime configuration (``$XDG_CONFIG_HOME/cleanroom/config.yaml``).

Every key is optional; a missing or empty file means all defaults. Parsing is
as strict as for policies: unknown keys, wrong types, duplicate keys, tabs and
syntax errors raise :class:`~cleanroom.errors.ConfigInvalid` whose
``details['problems']`` lists every problem as ``config.yaml:L:C: key.path: message``.

::

    default_backend: auto            # auto | a name from cleanroom.backend_table
    workspace:
      access: rw                     # rw | ro
      roots: [PATH, ...]             # server directories a TCP client may name as cwd
                                     # (default none: TCP clients upload their workspace)
    backends:                        # one section per backend, owned and parsed by it
      firecracker: {binary_path, kernel_image, initrd, rootfs, vcpus, memory_mib,
                    guest_cid, launch_seconds}
      qemu:        {binary_path, kernel_image, initrd, rootfs, vcpus, memory_mib,
                    accel: auto | kvm | tcg, launch_seconds}
    network:
      uplink_netns: NAME             # an existing network namespace; default: the host
      resolvers: [IP, ...]           # upstream DNS; default: the host's /etc/resolv.conf
    pool:
      size: 0                        # warm guests kept ready, per image
      images: [builtin]              # which images: builtin, a pinned ref or a cached key
    images: {insecure_registries, allow_override, default, max}   # see cleanroom.config_images
    limits: {console_log_bytes, output_log_bytes, run_timeout_seconds, workspace_bytes,
             workspace_apparent_bytes, max_concurrent_runs}         # see cleanroom.config_limits
    policy: {isolation, ceiling: {hosts, images, max}}             # see cleanroom.config_policy

Paths must be absolute (``~`` is expanded). ``binary_path: null`` means look the
VMM up on ``PATH``, a bare command name is looked up on ``PATH`` too; image
paths ``null`` mean the built guest image. Which ``backends.<name>`` sections
exist, and how each is parsed, comes from :mod:`cleanroom.backend_table`: each
backend owns its section class (``RuntimeConfig.backends[name]``; also readable
as ``config.<name>``, e.g. ``config.qemu``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from cleanroom import backend_table, paths
from cleanroom._yaml import (
    Problems,
    YamlEntry,
    parse_yaml,
    read_mapping,
    read_sequence,
    read_str,
)
from cleanroom.backend_table import BackendSettings, load_ref, settings_class
from cleanroom.config_images import IMAGES_KEYS, ImagesConfig, read_images
from cleanroom.config_limits import LIMITS_KEYS, LimitsConfig, read_limits
from cleanroom.config_policy import POLICY_KEYS, PolicyConfig, read_policy_section
from cleanroom.config_reader import SectionReader, is_null
from cleanroom.errors import ConfigInvalid

__all__ = [
    "BUILTIN_IMAGE",
    "BackendName",
    "ImagesConfig",
    "LimitsConfig",
    "NetworkConfig",
    "PolicyConfig",
    "PoolConfig",
    "RuntimeConfig",
    "WorkspaceAccess",
    "WorkspaceConfig",
    "load_config",
    "parse_config_text",
]

BackendName = str
"""``auto`` or a name from :data:`cleanroom.backend_table.BACKENDS`."""
WorkspaceAccess = Literal["rw", "ro"]

_MAX_NETNS_NAME = 255

_MOVED = {
    "FirecrackerConfig": "cleanroom.backends.firecracker.settings:FirecrackerConfig",
    "QemuConfig": "cleanroom.backends.qemu.settings:QemuConfig",
    "QemuAccel": "cleanroom.backends.qemu.settings:QemuAccel",
}
"""Names that moved into their backend's package; still importable from here."""


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return load_ref(_MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class NetworkConfig:
    """Where sandboxes' traffic leaves, and which DNS servers answer allowed names."""

    uplink_netns: str | None = None
    resolvers: tuple[str, ...] | None = None


BUILTIN_IMAGE = "builtin"
"""``pool.images`` entry naming the built-in image."""


@dataclass(frozen=True)
class PoolConfig:
    """The warm pool: how many ready guests to keep, of which images."""

    size: int = 0
    """Ready guests kept per image (and backend)."""
    images: tuple[str, ...] = (BUILTIN_IMAGE,)
    """The images kept warm: :data:`BUILTIN_IMAGE`, or digest-pinned refs (normalised;
    a bare ``sha256:`` key names an image already in the cache). A run whose image
    is not listed boots cold."""


@dataclass(frozen=True)
class WorkspaceConfig:
    """How the workspace is mounted in the guest by default."""

    access: WorkspaceAccess = "rw"
    roots: tuple[Path, ...] = ()
    """Directories under which a request over TCP may name a server-side ``cwd``
    (the unix socket may name any); none by default: TCP clients upload their
    workspace instead."""


def _default_sections() -> dict[str, BackendSettings]:
    return {name: settings_class(name)() for name in backend_table.backend_names()}


@dataclass(frozen=True, init=False)
class RuntimeConfig:
    """The whole runtime configuration; ``source`` is the file read (``None``: defaults).

    ``backends`` holds every backend's section (its defaults where the file has
    none), keyed by the names in :mod:`cleanroom.backend_table`. A section can
    also be given or read by name: ``RuntimeConfig(qemu=QemuConfig(...))``,
    ``config.qemu``.
    """

    default_backend: BackendName
    workspace: WorkspaceConfig
    network: NetworkConfig
    pool: PoolConfig
    backends: Mapping[str, BackendSettings]
    images: ImagesConfig
    limits: LimitsConfig
    policy: PolicyConfig
    source: Path | None = field(compare=False)

    def __init__(
        self,
        *,
        default_backend: BackendName = "auto",
        workspace: WorkspaceConfig | None = None,
        network: NetworkConfig | None = None,
        pool: PoolConfig | None = None,
        backends: Mapping[str, BackendSettings] | None = None,
        source: Path | None = None,
        images: ImagesConfig | None = None,
        limits: LimitsConfig | None = None,
        policy: PolicyConfig | None = None,
        **sections: BackendSettings,
    ) -> None:
        merged = _default_sections()
        for name, section in {**(backends or {}), **sections}.items():
            if name not in merged:
                raise TypeError(f"RuntimeConfig got an unknown backend section {name!r}")
            merged[name] = section
        setter = object.__setattr__
        setter(self, "default_backend", default_backend)
        setter(self, "workspace", workspace if workspace is not None else WorkspaceConfig())
        setter(self, "network", network if network is not None else NetworkConfig())
        setter(self, "pool", pool if pool is not None else PoolConfig())
        setter(self, "backends", MappingProxyType(merged))
        setter(self, "source", source)
        setter(self, "images", images if images is not None else ImagesConfig())
        setter(self, "limits", limits if limits is not None else LimitsConfig())
        setter(self, "policy", policy if policy is not None else PolicyConfig())

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: a backend's section by name.
        backends = self.__dict__.get("backends", {})
        if name in backends:
            return backends[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __hash__(self) -> int:
        return hash(
            (
                self.default_backend,
                self.workspace,
                self.network,
                self.pool,
                self.images,
                self.limits,
                self.policy,
            )
        )


def _read_network(reader: SectionReader, section: dict[str, YamlEntry]) -> NetworkConfig:
    problems = reader.problems
    uplink: str | None = None
    entry = section.get("uplink_netns")
    if entry is not None and not is_null(entry.value):
        uplink = read_str(entry.value, "network.uplink_netns", problems)
        if uplink is not None and (
            "/" in uplink or uplink in (".", "..") or len(uplink) > _MAX_NETNS_NAME
        ):
            problems.add(entry.value.mark, "network.uplink_netns", "not a network namespace name")
            uplink = None
    resolvers: tuple[str, ...] | None = None
    entry = section.get("resolvers")
    if entry is not None and not is_null(entry.value):
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


def parse_config_text(text: str, source_name: str) -> RuntimeConfig:
    """Parse runtime configuration ``text``; problems name the file ``source_name``.

    Raises :class:`~cleanroom.errors.ConfigInvalid` listing every problem.
    """
    problems = Problems(source_name)
    root = parse_yaml(text, problems)
    problems.raise_if_any(ConfigInvalid, "runtime config")
    if root is None:
        return RuntimeConfig()
    top = (
        "default_backend",
        "workspace",
        "backends",
        "network",
        "pool",
        "images",
        "limits",
        "policy",
    )
    entries = read_mapping(root, "", problems, allowed=top) or {}
    reader = SectionReader(problems)
    names = backend_table.backend_names()
    backend = reader.choice(entries, "default_backend", "", ("auto", *names), "auto")
    workspace = reader.section(entries, "workspace", "", ("access", "roots"))
    access = reader.choice(workspace, "access", "workspace", ("rw", "ro"), "rw")
    roots = _read_roots(reader, workspace.get("roots"))
    backends = reader.section(entries, "backends", "", names)
    sections: dict[str, BackendSettings] = {}
    for name in names:
        cls = settings_class(name)
        section = reader.section(backends, name, "backends", cls.KEYS)
        sections[name] = cls.parse(reader, section, f"backends.{name}")
    network = _read_network(
        reader, reader.section(entries, "network", "", ("uplink_netns", "resolvers"))
    )
    pool = reader.section(entries, "pool", "", ("size", "images"))
    size = reader.integer(pool, "size", "pool", 0, minimum=0)
    pool_images = _read_pool_images(pool.get("images"), problems)
    images = read_images(reader, reader.section(entries, "images", "", IMAGES_KEYS))
    limits = read_limits(reader, reader.section(entries, "limits", "", LIMITS_KEYS))
    policy = read_policy_section(reader, reader.section(entries, "policy", "", POLICY_KEYS))
    problems.raise_if_any(ConfigInvalid, "runtime config")
    return RuntimeConfig(
        default_backend=backend,
        workspace=WorkspaceConfig(access=cast(WorkspaceAccess, access), roots=roots),
        backends=sections,
        network=network,
        pool=PoolConfig(size=size, images=pool_images),
        images=images,
        limits=limits,
        policy=policy,
    )


def _read_roots(reader: SectionReader, entry: YamlEntry | None) -> tuple[Path, ...]:
    """``workspace.roots``: absolute directory paths."""
    if entry is None or is_null(entry.value):
        return ()
    items = read_sequence(entry.value, "workspace.roots", reader.problems) or ()
    found = (reader.path_value(item, f"workspace.roots[{i}]") for i, item in enumerate(items))
    return tuple(path for path in found if path is not None)


def _read_pool_images(entry: YamlEntry | None, problems: Problems) -> tuple[str, ...]:
    """``pool.images``: ``builtin`` or digest-pinned refs, normalised, without repeats."""
    if entry is None or is_null(entry.value):
        return (BUILTIN_IMAGE,)
    # The policy package is only needed when this key is given.
    from cleanroom.policy.image import InvalidImageRef, parse_image_ref  # noqa: PLC0415

    found: list[str] = []
    for index, item in enumerate(read_sequence(entry.value, "pool.images", problems) or ()):
        text = read_str(item, f"pool.images[{index}]", problems)
        if text is None:
            continue
        name = text.strip()
        if name != BUILTIN_IMAGE:
            try:
                name = str(parse_image_ref(name))
            except InvalidImageRef as exc:
                problems.add(item.mark, f"pool.images[{index}]", exc.message)
                continue
        if name not in found:
            found.append(name)
    return tuple(found)


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
