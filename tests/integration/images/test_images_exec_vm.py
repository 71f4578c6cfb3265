"""User images end to end: ``cleanroom exec`` through a real server on real guests.

One server (QEMU, TCG here) serves every test in this module. The images are
real: an OCI image with no Python (busybox, a named non-root user, its own
``Env``) pushed to a docker-registry on 127.0.0.1 and pulled by the server at
launch; and a Debian package list (nodejs, npm, git) built with mmdebstrap,
cached by the content-addressed image cache between test runs. Each test boots
one guest and packs its checks into one command.
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
from ocitools import Registry, insert, new_layout, run

from cleanroom.cli.launch_image import prepare_launch_image
from cleanroom.config import NetworkConfig, PoolConfig, QemuConfig, RuntimeConfig
from cleanroom.images import lookup_user_image
from cleanroom.models import LaunchOptions
from cleanroom.server import ListenAddress
from cleanroom.service import Service
from cleanroom.service.pool import WarmPool
from cleanroom.service.record import RECORD_NAME
from cleanroom.testing import ServerThread

pytestmark = [pytest.mark.vm, pytest.mark.image]

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\n"
CLEANROOM = str(Path(sys.executable).parent / "cleanroom")
POLICY = "version: 1\nsandbox:\n  network:\n    default: deny\n"
TOOLCHAIN_POLICY = """\
version: 1
sandbox:
  image:
    debian:
      packages: [git, nodejs, npm]
  resources: {vcpus: 1, memory_mib: 1024}
  network:
    default: deny
"""


def _cli(
    host: str, *args: str, cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLEANROOM, *args[:1], "--host", host, *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def _build_app_image(layout: Path, work: Path) -> None:
    """No Python: static busybox, a user ``app`` (uid 1000, home /home/app), its own Env."""
    busybox = shutil.which("busybox")
    assert busybox is not None
    new_layout(layout, "app")
    tree = work / "app-tree"
    for sub in ("bin", "etc", "home/app"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, tree / "bin/busybox")
    applets = run(busybox, "--list").decode().split()
    for applet in applets:
        if applet != "busybox":
            (tree / "bin" / applet).symlink_to("busybox")
    (tree / "etc/passwd").write_text(PASSWD)
    (tree / "etc/group").write_text(GROUP)
    # A new image every session, so its first pull is a real one.
    (tree / "etc/build-id").write_text(os.urandom(8).hex())
    os.chown(tree / "home/app", 1000, 1000)
    insert(layout, "app", tree)
    run(
        "umoci", "config", "--no-history", "--image", f"{layout}:app",
        "--config.env", "PATH=/bin", "--config.env", "TOOL_MODE=from-image",
        "--config.user", "app", "--config.cmd", "/bin/false",
    )  # fmt: skip


@pytest.fixture(scope="module")
def app_ref(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The pinned ref of the ``app`` image in a docker-registry on 127.0.0.1."""
    for tool in ("docker-registry", "skopeo", "umoci", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (run scripts/setup)")
    base = tmp_path_factory.mktemp("oci")
    registry = Registry(base / "registry")
    try:
        _build_app_image(base / "layout", base)
        digest = registry.push(base / "layout", "app", "test/app")
        yield f"{registry.host}/test/app:app@{digest}"
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server over the real service (QEMU) on a unix socket."""
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"crx-{os.getpid()}"
    root.mkdir(exist_ok=True)
    config = RuntimeConfig(qemu=QemuConfig(accel="tcg", launch_seconds=180))
    sock = root / "s.sock"
    try:
        with ServerThread(Service(config), ListenAddress(scheme="unix", path=sock)):
            yield f"unix://{sock}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _record(result: dict[str, object]) -> dict[str, object]:
    record = json.loads((Path(str(result["run_dir"])) / RECORD_NAME).read_text())
    assert isinstance(record, dict)
    return record


def test_cli_prepares_the_launch_image_with_progress(
    app_ref: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `cleanroom exec` does on the local socket before asking the server."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cleanroom.yaml").write_text(POLICY)
    prepare_launch_image(repo, None)  # the built-in image: nothing to do
    assert capsys.readouterr().err == ""
    prepare_launch_image(repo, app_ref)
    digest = app_ref.rsplit("@", 1)[1]
    assert lookup_user_image(digest) is not None
    assert "[pull]" in capsys.readouterr().err  # plain progress lines: not a terminal


def test_oci_image_without_python_runs_as_its_user(host: str, app_ref: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cleanroom.yaml").write_text(POLICY)
    (repo / "notes.txt").write_text("from the host\n")
    script = (
        "id -un; id -u; echo mode=$TOOL_MODE; echo home=$HOME; echo path=$PATH; pwd; "
        "stat -c 'ws=%U' /workspace; stat -c 'notes=%U' notes.txt; "
        "touch made-here && stat -c 'new=%U' made-here; "
        "test -e /usr/bin/python3 || echo no-python; cat /etc/passwd | cut -d: -f1 | head -2; "
        "df -Pk / | tail -1 | awk '{print \"free_kib=\" $4}'"
    )
    proc = _cli(
        host, "exec", "--json", "--image", app_ref, "--cwd", str(repo), "--", script, cwd=repo
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    lines = result["stdout"].splitlines()
    assert lines[:4] == ["app", "1000", "mode=from-image", "home=/home/app"], result
    assert lines[4] == "path=/bin"
    assert lines[5] == "/workspace"
    assert lines[6:9] == ["ws=app", "notes=app", "new=app"]
    assert "no-python" in lines
    free_kib = int(lines[-1].removeprefix("free_kib="))
    assert free_kib >= 2 << 20  # the default disk leaves / at least 2 GiB free
    record = _record(result)
    image = record["image"]
    assert isinstance(image, dict)
    assert image["source"].endswith("@" + app_ref.rsplit("@", 1)[1])
    assert image["key"].startswith("sha256:")
    assert isinstance(record["resources"], dict)
    assert record["resources"]["disk_mib"] == 16384


@pytest.mark.archive
def test_node_project_npm_test_and_git_in_a_debian_image(host: str, tmp_path: Path) -> None:
    """``npm test`` (node's built-in runner) and git in one guest of a Debian toolchain image."""
    for tool in ("mmdebstrap", "git"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (run scripts/setup)")
    repo = tmp_path / "proj"
    (repo / "test").mkdir(parents=True)
    (repo / "cleanroom.yaml").write_text(TOOLCHAIN_POLICY)
    (repo / "package.json").write_text(
        json.dumps({"name": "proj", "version": "1.0.0", "scripts": {"test": "node --test"}})
    )
    (repo / "sum.js").write_text("module.exports = (a, b) => a + b;\n")
    (repo / "test" / "sum.test.js").write_text(
        "const test = require('node:test');\n"
        "const assert = require('node:assert');\n"
        "const sum = require('../sum.js');\n"
        "test('adds', () => { assert.strictEqual(sum(2, 3), 5); });\n"
    )
    git = ["git", "-c", "user.name=T", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first commit"], cwd=repo, check=True)
    (repo / "sum.js").write_text("module.exports = (a, b) => b + a;\n")  # a change git sees
    # The image is built (or found in the cache) first, as `cleanroom exec` does
    # on the local socket, so the launch below is a cache hit.
    prepared = subprocess.run(
        [CLEANROOM, "image", "prepare", str(repo)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert prepared.returncode == 0, prepared.stderr + prepared.stdout
    script = "npm test && git status --short && git log --format=%s"
    proc = _cli(host, "exec", "--json", "--cwd", str(repo), "--", script, cwd=repo, timeout=900)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    out = result["stdout"]
    assert "# pass 1" in out, result
    assert "# fail 0" in out
    assert " M sum.js" in out.splitlines()
    assert out.splitlines()[-1] == "first commit"
    record = _record(result)
    assert isinstance(record["image"], dict)
    assert record["image"]["source"].startswith("debian:")
    assert record["resources"] == {"vcpus": 1, "memory_mib": 1024, "disk_mib": 16384}


async def _pool_of(svc: Service, key: str) -> WarmPool:
    """The user image's pool, once the service has made it ready (in the background)."""
    async with asyncio.timeout(300):
        # The service offers no event for this; polling its accessor is enough here.
        while (pool := svc.pool("qemu", key)) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    return pool


@pytest.fixture
def uplink() -> Iterator[NetworkConfig]:
    """A network namespace of its own as the uplink (no route out; the host's is untouched)."""
    name = f"crt-imgup-{os.getpid() % 0xFFFF:04x}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield NetworkConfig(uplink_netns=name, resolvers=("192.0.2.53",))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def test_warm_pool_is_keyed_by_image(
    app_ref: str, tmp_path: Path, uplink: NetworkConfig
) -> None:
    """Only the listed image is kept warm: its runs hit, a built-in image run boots cold."""
    config = RuntimeConfig(
        qemu=QemuConfig(accel="tcg", launch_seconds=180),
        network=uplink,
        pool=PoolConfig(size=1, images=(app_ref,)),
    )
    svc = Service(config)
    await svc.start()
    try:
        repo = tmp_path / "repo"
        repo.mkdir()
        (repo / "cleanroom.yaml").write_text(POLICY)
        info = await svc.launch(repo, options=LaunchOptions(image=app_ref))
        assert info.image is not None
        pool = await _pool_of(svc, info.image.key)
        await pool.wait_ready(1, timeout=300)
        assert svc.pool("qemu") is None  # the built-in image is not listed
        warm = await svc.run(info.cleanroom_id, ["sh", "-c", "id -un; echo $TOOL_MODE; ls"])
        assert warm.stdout == "app\nfrom-image\ncleanroom.yaml\n"
        record = await svc.run_record(warm.run_id)
        assert record["pool"] == "hit"
        assert record["image"] == {"key": info.image.key, "source": info.image.source}
        builtin = await svc.launch(repo)
        cold = await svc.run(builtin.cleanroom_id, ["sh", "-c", "id -un"])
        assert cold.stdout == "root\n"
        assert (await svc.run_record(cold.run_id))["pool"] == "miss"
        assert svc.pool("qemu") is None
    finally:
        await svc.close()
