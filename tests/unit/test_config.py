"""Runtime config: defaults, every key, strict located errors."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from cleanroom.backend_table import BACKENDS, settings_class
from cleanroom.backends.firecracker import FirecrackerConfig
from cleanroom.backends.qemu import QemuConfig
from cleanroom.config import (
    NetworkConfig,
    PoolConfig,
    RuntimeConfig,
    WorkspaceConfig,
    load_config,
    parse_config_text,
)
from cleanroom.config_limits import _COUNT_MINIMUMS, _UPLOAD_SECONDS, LIMITS_KEYS, LimitsConfig
from cleanroom.errors import ConfigInvalid

FULL = """\
default_backend: qemu
workspace:
  access: ro
backends:
  firecracker:
    binary_path: /opt/fc/firecracker
    kernel_image: /images/vmlinux
    initrd: /images/initrd.img
    rootfs: /images/rootfs.ext4
    vcpus: 2
    memory_mib: 512
    guest_cid: 7
    launch_seconds: 30
  qemu:
    binary_path: ~/bin/qemu-system-x86_64
    kernel_image: /images/bzImage
    initrd: /images/initrd.img
    rootfs: /images/rootfs.ext4
    vcpus: 4
    memory_mib: 1024
    accel: tcg
    launch_seconds: 120.5
network:
  uplink_netns: test-internet
  resolvers: [192.0.2.53, "2001:DB8::53"]
pool:
  size: 3
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config_text(text, "config.yaml")
    assert info.value.code == "config_invalid"
    problems = info.value.details["problems"]
    assert isinstance(problems, list)
    return problems


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.yaml")
    assert config == RuntimeConfig()
    assert config.default_backend == "auto"
    assert config.workspace == WorkspaceConfig(access="rw")
    assert config.qemu == QemuConfig(
        binary_path=None,
        kernel_image=None,
        initrd=None,
        rootfs=None,
        vcpus=1,
        memory_mib=256,
        accel="auto",
        launch_seconds=60.0,
    )
    assert config.firecracker.guest_cid == 3
    assert config.firecracker.launch_seconds == 60.0
    assert config.network == NetworkConfig(uplink_netns=None, resolvers=None)
    assert config.pool == PoolConfig(size=0)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("# nothing configured\n")
    config = load_config(path)
    assert config == RuntimeConfig()
    assert config.source == path


def test_default_path_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "cleanroom").mkdir()
    (tmp_path / "cleanroom" / "config.yaml").write_text("pool: {size: 2}\n")
    assert load_config().pool.size == 2


def test_every_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(FULL)
    config = load_config(path)
    assert config.default_backend == "qemu"
    assert config.workspace.access == "ro"
    assert config.firecracker == FirecrackerConfig(
        binary_path=Path("/opt/fc/firecracker"),
        kernel_image=Path("/images/vmlinux"),
        initrd=Path("/images/initrd.img"),
        rootfs=Path("/images/rootfs.ext4"),
        vcpus=2,
        memory_mib=512,
        guest_cid=7,
        launch_seconds=30.0,
    )
    assert config.qemu == QemuConfig(
        binary_path=Path("~/bin/qemu-system-x86_64").expanduser(),
        kernel_image=Path("/images/bzImage"),
        initrd=Path("/images/initrd.img"),
        rootfs=Path("/images/rootfs.ext4"),
        vcpus=4,
        memory_mib=1024,
        accel="tcg",
        launch_seconds=120.5,
    )
    assert config.network == NetworkConfig(
        uplink_netns="test-internet", resolvers=("192.0.2.53", "2001:db8::53")
    )
    assert config.pool.size == 3


def test_null_paths_mean_defaults() -> None:
    config = parse_config_text(
        "backends:\n  qemu:\n    binary_path: null\n    rootfs: ~\nnetwork:\n  resolvers: null\n",
        "config.yaml",
    )
    assert config.qemu.binary_path is None
    assert config.qemu.rootfs is None
    assert config.network.resolvers is None


def test_unknown_keys_are_located() -> None:
    assert problems_of("pool:\n  size: 1\n  max: 2\nbackend: qemu\n") == [
        "config.yaml:3:3: pool.max: unknown key 'max' (expected one of: images, size)",
        "config.yaml:4:1: backend: unknown key 'backend' "
        "(expected one of: backends, default_backend, images, limits, network, policy, pool, "
        "run_dir_roots, workspace)",
    ]


def test_backend_sections_only_take_their_own_keys() -> None:
    problems = problems_of("backends:\n  qemu:\n    guest_cid: 5\n  firecracker:\n    accel: tcg\n")
    assert [p.split(": ")[:2] for p in problems] == [
        ["config.yaml:3:5", "backends.qemu.guest_cid"],
        ["config.yaml:5:5", "backends.firecracker.accel"],
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default_backend: kvm\n", "config.yaml:1:18: default_backend: expected one of"),
        ("workspace: {access: rwx}\n", "config.yaml:1:21: workspace.access: expected one of"),
        ("backends: {qemu: {accel: fast}}\n", "config.yaml:1:26: backends.qemu.accel:"),
        ("backends: {qemu: {vcpus: 0}}\n", "backends.qemu.vcpus: must be between 1 and 32"),
        ("backends: {qemu: {vcpus: '2'}}\n", "backends.qemu.vcpus: expected an integer"),
        ("backends: {qemu: {memory_mib: 1.5}}\n", "backends.qemu.memory_mib: expected an integer"),
        ("backends: {qemu: {launch_seconds: 0}}\n", "launch_seconds: must be a finite number"),
        ("backends: {qemu: {launch_seconds: .inf}}\n", "launch_seconds: must be a finite number"),
        ("backends: {qemu: {launch_seconds: yes}}\n", "launch_seconds: expected a number"),
        ("backends: {qemu: {rootfs: images/rootfs}}\n", "rootfs: must be an absolute path"),
        ("backends: {firecracker: {guest_cid: 2}}\n", "guest_cid: must be between 3 and"),
        ("network: {uplink_netns: a/b}\n", "network.uplink_netns: not a network namespace name"),
        ("network: {resolvers: [dns.example]}\n", "network.resolvers[0]: not an IP address"),
        ("network: {resolvers: []}\n", "network.resolvers: must list at least one address"),
        ("network: {resolvers: 192.0.2.53}\n", "network.resolvers: expected a list"),
        ("pool: {size: -1}\n", "config.yaml:1:14: pool.size: must be at least 0"),
        ("pool: 3\n", "config.yaml:1:7: pool: expected a mapping"),
        ("pool: {size: 1}\npool: {size: 2}\n", "config.yaml:2:1: pool: duplicate key"),
        ("pool:\n\tsize: 1\n", "config.yaml:2:1: tab character"),
        ("pool: {size: 1\n", "YAML syntax error"),
        ("- 1\n", "config.yaml:1:1: (document): expected a mapping"),
    ],
)
def test_invalid_values(text: str, expected: str) -> None:
    problems = problems_of(text)
    assert any(expected in problem for problem in problems), problems


def test_all_problems_at_once() -> None:
    text = "default_backend: kvm\nworkspace: {access: x}\npool: {size: -2}\n"
    assert len(problems_of(text)) == 3


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("pool: {size: x}\n")
    with pytest.raises(ConfigInvalid) as info:
        load_config(path)
    assert info.value.details["problems"] == [
        "config.yaml:1:14: pool.size: expected an integer, got a string ('x')"
    ]


def test_non_utf8_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"pool: \xfe\n")
    with pytest.raises(ConfigInvalid):
        load_config(path)


def test_unreadable_config_is_translated(tmp_path: Path) -> None:
    # A directory where the file should be: reading it fails with an OSError.
    path = tmp_path / "config.yaml"
    path.mkdir()
    with pytest.raises(ConfigInvalid) as info:
        load_config(path)
    assert isinstance(info.value.__cause__, OSError)


def test_every_table_backend_has_its_own_section() -> None:
    config = RuntimeConfig()
    assert set(config.backends) == set(BACKENDS)
    for name in BACKENDS:
        assert type(config.backends[name]) is settings_class(name)
        assert getattr(config, name) is config.backends[name]


def test_unknown_backend_section_is_located() -> None:
    assert problems_of("backends:\n  gvisor: {}\n") == [
        "config.yaml:2:3: backends.gvisor: unknown key 'gvisor' "
        "(expected one of: firecracker, qemu)"
    ]


def test_sections_by_name_as_before() -> None:
    import cleanroom.config as config_module  # noqa: PLC0415 - the moved names, as old code imports them

    assert config_module.QemuConfig is QemuConfig
    assert config_module.FirecrackerConfig is FirecrackerConfig
    qemu = QemuConfig(accel="tcg", launch_seconds=120)
    config = RuntimeConfig(qemu=qemu)
    assert config.qemu is qemu
    assert config.backends["qemu"] is qemu
    assert config == RuntimeConfig(backends={"qemu": qemu})
    assert config != RuntimeConfig()
    assert hash(config) == hash(RuntimeConfig(qemu=qemu))
    with pytest.raises(TypeError, match="unknown backend section 'bochs'"):
        RuntimeConfig(bochs=qemu)
    with pytest.raises(AttributeError):
        _ = config.bochs


def test_binary_path_may_be_a_command_name() -> None:
    text = "backends:\n  firecracker: {binary_path: firecracker}\n  qemu: {binary_path: qemu-kvm}\n"
    config = parse_config_text(text, "config.yaml")
    assert config.firecracker.binary_path == Path("firecracker")
    assert config.qemu.binary_path == Path("qemu-kvm")
    assert problems_of("backends: {qemu: {binary_path: bin/qemu}}\n") == [
        "config.yaml:1:32: backends.qemu.binary_path: must be an absolute path, got 'bin/qemu'"
    ]


def test_readme_config_section_parses() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Runtime configuration", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config_text(block, "README.md")
    assert config.firecracker.binary_path == Path("firecracker")
    assert config.firecracker.initrd is None
    assert config.firecracker.launch_seconds == 30.0


def test_pool_images_are_builtin_or_pinned_refs() -> None:
    digest = "sha256:" + "0f" * 32
    ref = f"Registry.Example:5000/a/b:1@{digest}"
    config = parse_config_text(
        f"pool:\n  size: 1\n  images: [builtin, '{ref}', {digest}]\n", "config.yaml"
    )
    assert config.pool == PoolConfig(
        size=1, images=("builtin", f"registry.example:5000/a/b:1@{digest}", digest)
    )
    assert parse_config_text("pool: {size: 1}\n", "config.yaml").pool.images == ("builtin",)
    assert parse_config_text("pool: {images: []}\n", "config.yaml").pool.images == ()
    with pytest.raises(ConfigInvalid) as caught:
        parse_config_text("pool:\n  images: [node:20, 3]\n", "config.yaml")
    problems = caught.value.details["problems"]
    assert len(problems) == 2
    assert problems[0].startswith("config.yaml:2:12: pool.images[0]: 'node:20' is not pinned")
    assert problems[1].startswith("config.yaml:2:21: pool.images[1]:")


def test_qemu_unprivileged_switch() -> None:
    assert RuntimeConfig().qemu.unprivileged is True
    off = parse_config_text("backends:\n  qemu:\n    unprivileged: off\n", "config.yaml")
    assert off.qemu.unprivileged is False
    assert any(
        "unprivileged" in p for p in problems_of("backends:\n  qemu:\n    unprivileged: 1\n")
    )


def test_run_dir_roots() -> None:
    assert RuntimeConfig().run_dir_roots is None  # the state directory, at launch
    config = parse_config_text("run_dir_roots: [/srv/runs, ~/runs, /srv/runs]\n", "config.yaml")
    assert config.run_dir_roots == (Path("/srv/runs"), Path("~/runs").expanduser())
    assert parse_config_text("run_dir_roots: []\n", "config.yaml").run_dir_roots == ()
    assert problems_of("run_dir_roots: [rel/dir]\n") == [
        "config.yaml:1:17: run_dir_roots[0]: must be an absolute path, got 'rel/dir'"
    ]


def test_every_limit_key_is_read_by_one_rule() -> None:
    """Each ``limits`` key is a field, and is read as a count or as one of the durations."""
    durations = {"run_timeout_seconds", "runs_max_age_days", *_UPLOAD_SECONDS}
    assert not durations & set(_COUNT_MINIMUMS)
    assert set(_COUNT_MINIMUMS) | durations == {f.name for f in fields(LimitsConfig)}
    assert set(LIMITS_KEYS) == {f.name for f in fields(LimitsConfig)}


def test_upload_limits() -> None:
    defaults = RuntimeConfig().limits
    assert (defaults.upload_timeout_seconds, defaults.upload_min_bytes) == (1800.0, 65536)
    assert (defaults.upload_window_seconds, defaults.upload_ttl_seconds) == (30.0, 600.0)
    text = (
        "limits:\n  upload_timeout_seconds: 60\n  upload_min_bytes: 1024\n"
        "  upload_window_seconds: 2.5\n  upload_ttl_seconds: 30\n"
    )
    limits = parse_config_text(text, "config.yaml").limits
    assert (limits.upload_timeout_seconds, limits.upload_min_bytes) == (60.0, 1024)
    assert (limits.upload_window_seconds, limits.upload_ttl_seconds) == (2.5, 30.0)
    assert problems_of("limits: {upload_timeout_seconds: 90000}\n") == [
        "config.yaml:1:34: limits.upload_timeout_seconds: must be at most 86400"
    ]
    assert len(problems_of("limits: {upload_window_seconds: 0}\n")) == 1
    assert len(problems_of("limits: {upload_min_bytes: 0}\n")) == 1
    assert len(problems_of("limits: {upload_ttl_seconds: soon}\n")) == 1
    assert len(problems_of("limits: {upload_deadline: 5}\n")) == 1
