"""Snapshots per user image, end to end: real registry, real server, real guests.

Two OCI images (busybox plus a command only they have, differing in one file,
so in digest) are pushed to a docker-registry on 127.0.0.1. ``cleanroom image
warm REF`` makes the first one's snapshots; its warm pool refills from them; a
run in it is then restored and runs the image's own command; a run in the
second image (a new digest) finds no snapshot of its own and boots cold; a
snapshot file changed on disk makes the next run boot cold, saying why. One
server serves the module; the guests are few (under software emulation each
costs seconds).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ocitools import BUSYBOX, Registry, insert, new_layout, run

from cleanroom.cli.launch_image import prepare_launch_image
from cleanroom.config import NetworkConfig, PoolConfig, QemuConfig, RuntimeConfig
from cleanroom.images import lookup_user_image, remove_user_images
from cleanroom.models import LaunchOptions
from cleanroom.server import ListenAddress
from cleanroom.service import Service
from cleanroom.service.record import RECORD_NAME
from cleanroom.testing import ServerThread

pytestmark = [pytest.mark.vm, pytest.mark.image]

CLEANROOM = str(Path(sys.executable).parent / "cleanroom")
POLICY = "version: 1\nsandbox:\n  network:\n    default: deny\n"
CONFIG = "backends:\n  qemu:\n    accel: tcg\n    launch_seconds: 180\n"
"""The runtime config of both the server and ``image warm`` (their snapshots must match)."""
TOOL = "#!/bin/sh\necho only-in-image $(cat /etc/marker) $TOOL_MODE\n"


def _build(layout: Path, work: Path, tag: str) -> None:
    """busybox, and ``/opt/tool/bin/snaptool``, found through the image's own PATH."""
    new_layout(layout, tag)
    tree = work / f"{tag}-tree"
    for sub in ("bin", "etc", "opt/tool/bin"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, tree / "bin/busybox")
    for applet in ("sh", "cat", "echo"):
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "etc/marker").write_text(f"{tag}-{os.urandom(4).hex()}")  # a new digest per session
    (tree / "opt/tool/bin/snaptool").write_text(TOOL)
    (tree / "opt/tool/bin/snaptool").chmod(0o755)
    insert(layout, tag, tree)
    run(
        "umoci", "config", "--no-history", "--image", f"{layout}:{tag}",
        "--config.env", "PATH=/opt/tool/bin:/bin", "--config.env", "TOOL_MODE=snap",
    )  # fmt: skip


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Pinned refs of images ``one`` and ``two`` in a docker-registry on 127.0.0.1;
    their cache entries (and snapshots) are removed afterwards."""
    for tool in ("docker-registry", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (run scripts/setup)")
    base = tmp_path_factory.mktemp("oci")
    registry = Registry(base / "registry")
    pinned: dict[str, str] = {}
    try:
        for tag in ("one", "two"):
            _build(base / "layout", base, tag)
            digest = registry.push(base / "layout", tag, "test/snap")
            pinned[tag] = f"{registry.host}/test/snap:{tag}@{digest}"
        yield pinned
    finally:
        registry.stop()
        for ref in pinned.values():
            if lookup_user_image(ref.rsplit("@", 1)[1]) is not None:
                remove_user_images([ref.rsplit("@", 1)[1]])


@pytest.fixture(scope="module")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("config")
    (home / "cleanroom").mkdir()
    (home / "cleanroom" / "config.yaml").write_text(CONFIG)
    return home


@pytest.fixture(scope="module")
def host(config_home: Path) -> Iterator[str]:
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"crs-{os.getpid()}"
    root.mkdir(exist_ok=True)
    config = RuntimeConfig(qemu=QemuConfig(accel="tcg", launch_seconds=180))
    sock = root / "s.sock"
    try:
        with ServerThread(Service(config), ListenAddress(scheme="unix", path=sock)):
            yield f"unix://{sock}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    proc = subprocess.run(
        [CLEANROOM, *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    return result


def _exec(host: str, ref: str, repo: Path) -> tuple[str, dict[str, object]]:
    """Run ``snaptool`` in ``ref``; its stdout and the run record."""
    result = _cli(
        "exec", "--host", host, "--json", "--image", ref, "--cwd", str(repo), "--", "snaptool",
        cwd=repo,
    )  # fmt: skip
    assert result["exit_code"] == 0, result
    record = json.loads((Path(str(result["run_dir"])) / RECORD_NAME).read_text())
    return str(result["stdout"]), record


@pytest.fixture(scope="module")
def warmed(
    refs: dict[str, str], config_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Image ``one`` pulled and its snapshots made by ``cleanroom image warm REF``;
    the directory of the one without a NIC."""
    repo = tmp_path_factory.mktemp("warm")
    (repo / "cleanroom.yaml").write_text(POLICY)
    prepare_launch_image(repo, refs["one"])  # pulls it, as `cleanroom exec` would
    key = refs["one"].rsplit("@", 1)[1]
    cached = lookup_user_image(key)
    assert cached is not None
    warmed = _cli(
        "image", "warm", refs["one"], "--json", cwd=repo, env={"XDG_CONFIG_HOME": str(config_home)}
    )["snapshot"]
    assert isinstance(warmed, dict)
    assert warmed["made"] is True
    assert warmed["facts"]["user_image"] == key
    snap_dir = Path(warmed["path"])
    # Cached with the image: removing the image removes it.
    assert snap_dir.parent == cached.image.rootfs.parent / "snapshots"
    assert {p.name for p in snap_dir.iterdir()} >= {"memory.mig", "rootfs.raw", "scratch.qcow2"}
    return snap_dir


@pytest.fixture
def uplink() -> Iterator[NetworkConfig]:
    """A network namespace of its own as the uplink (no route out; the host's is untouched)."""
    name = f"crt-snapup-{os.getpid() % 0xFFFF:04x}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield NetworkConfig(uplink_netns=name, resolvers=("192.0.2.53",))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def test_a_user_images_warm_pool_refills_from_its_snapshot(
    refs: dict[str, str], warmed: Path, uplink: NetworkConfig, tmp_path: Path
) -> None:
    config = RuntimeConfig(
        qemu=QemuConfig(accel="tcg", launch_seconds=180),
        network=uplink,
        pool=PoolConfig(size=1, images=(refs["one"],)),
    )
    svc = Service(config)
    await svc.start()
    try:
        repo = tmp_path / "repo"
        repo.mkdir()
        (repo / "cleanroom.yaml").write_text(POLICY)
        info = await svc.launch(repo, options=LaunchOptions(image=refs["one"]))
        assert info.image is not None
        async with asyncio.timeout(300):
            # The service offers no event for this; polling its accessor is enough here.
            while (pool := svc.pool("qemu", info.image.key)) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        await pool.wait_ready(1, timeout=300)
        run = await svc.run(info.cleanroom_id, ["snaptool"])
        assert run.stdout.startswith("only-in-image one-"), run
        record = await svc.run_record(run.run_id)
        assert record["pool"] == "hit"
        pooled = record["pool_guest"]
        assert (pooled["start"], pooled["start_fallback"]) == ("restored", None), pooled
    finally:
        await svc.close()


def test_runs_in_a_user_image_restore_from_its_own_snapshot(
    refs: dict[str, str], warmed: Path, host: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cleanroom.yaml").write_text(POLICY)
    key = refs["one"].rsplit("@", 1)[1]
    cached = lookup_user_image(key)
    assert cached is not None
    snap_dir = warmed

    # Restored, and running a command only the image has, as its config says.
    stdout, record = _exec(host, refs["one"], repo)
    assert stdout.split() == ["only-in-image", cached_marker(cached.image.rootfs), "snap"]
    assert (record["start"], record["start_fallback"]) == ("restored", None), record
    assert record["image"]["key"] == key  # type: ignore[index]

    # Another image (a new digest) never takes the first one's snapshot.
    stdout_two, record_two = _exec(host, refs["two"], repo)
    assert stdout_two.startswith("only-in-image two-")
    assert record_two["start"] == "cold"
    assert "no snapshot for this image" in str(record_two["start_fallback"])

    # A snapshot file changed on disk is refused; the run boots cold and says why.
    with (snap_dir / "scratch.qcow2").open("r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 0xFF]))
    stdout, record = _exec(host, refs["one"], repo)
    assert stdout.startswith("only-in-image one-")
    assert record["start"] == "cold"
    assert "scratch.qcow2 does not match its sha256" in str(record["start_fallback"])


def cached_marker(rootfs: Path) -> str:
    """``/etc/marker`` of the image whose ext4 is ``rootfs`` (read with debugfs)."""
    out = subprocess.run(
        ["debugfs", "-R", "cat /etc/marker", str(rootfs)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()
