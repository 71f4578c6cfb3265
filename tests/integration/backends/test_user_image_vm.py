"""Commands in a user image on real guests (QEMU, TCG here), driven through the
backend and the agent client directly.

The user image is made here with ``mkfs.ext4 -d``: busybox's static binary and
its applet links (no Python, no glibc), musl's loader with a small program
linked against it (where ``musl-gcc`` is installed, as ``scripts/setup``
does), an ``/etc/passwd`` with a non-root user ``app``, and no ``/tmp``,
``/proc``, ``/dev`` or ``/workspace`` of its own. Two boots share the
assertions: the first as ``app`` with the default disk size and a host-seeded
workspace, the second as root with a smaller ``disk_mib`` and more memory. The
image file is byte-identical after both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from backend_guest_scenarios import BOOT_SECONDS, Output, fresh_dir

from cleanroom.agent import AgentClient, AgentRemoteError
from cleanroom.backends.base import Guest, GuestSpec
from cleanroom.backends.qemu import QemuBackend, VerdictCache
from cleanroom.config import QemuConfig
from cleanroom.images import GuestImage
from cleanroom.images.userimage import ImageConfig, UserImage

pytestmark = [
    pytest.mark.vm,
    pytest.mark.image,
    pytest.mark.skipif(shutil.which("busybox") is None, reason="needs a static busybox"),
]

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\ntools:x:2000:app\n"
MARKER = "ID=cleanroom-busybox-test\n"
MUSL_LOADER = Path("/lib/ld-musl-x86_64.so.1")
MUSL_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    printf("musl: uid %d, %s\n", (int)getuid(), getenv("GREETING"));
    return 0;
}
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _busybox_image(tmp_path: Path) -> Path:
    busybox = shutil.which("busybox")
    assert busybox is not None
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    shutil.copy2(busybox, tree / "bin/busybox")
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (tree / "bin" / applet).symlink_to("busybox")
    if shutil.which("musl-gcc") is not None and MUSL_LOADER.exists():
        # A musl-style layout: the loader at /lib, a dynamically linked program.
        (tree / "lib").mkdir()
        shutil.copyfile(MUSL_LOADER.resolve(), tree / "lib" / MUSL_LOADER.name)
        (tree / "lib" / MUSL_LOADER.name).chmod(0o755)
        source = tmp_path / "hello.c"
        source.write_text(MUSL_PROGRAM)
        subprocess.run(["musl-gcc", "-O2", "-o", tree / "bin/hello-musl", source], check=True)
    (tree / "etc").mkdir()
    (tree / "etc/passwd").write_text(PASSWD)
    (tree / "etc/group").write_text(GROUP)
    (tree / "etc/os-release").write_text(MARKER)
    (tree / "home/app").mkdir(parents=True)
    (tree / "home/app").chmod(0o755)
    subprocess.run(["chown", "1000:1000", str(tree / "home/app")], check=True)
    image = tmp_path / "user-image.ext4"
    with image.open("wb") as fh:
        fh.truncate(32 << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "test-image", "-E", "root_owner=0:0", "-d", tree, image],
        check=True,
        capture_output=True,
    )
    return image


@pytest.fixture
def backend(guest_image: GuestImage, tmp_path: Path) -> QemuBackend:
    config = QemuConfig(
        kernel_image=guest_image.kernel,
        initrd=guest_image.initrd,
        rootfs=guest_image.rootfs,
        accel="tcg",
        memory_mib=256,
    )
    return QemuBackend(config, verdicts=VerdictCache(tmp_path / "verdicts.json"))


@contextlib.asynccontextmanager
async def _booted(
    backend: QemuBackend, spec: GuestSpec
) -> AsyncIterator[tuple[Guest, AgentClient]]:
    guest = await backend.launch(spec)
    try:
        loop = asyncio.get_running_loop()
        reader, writer = await guest.open_channel(loop.time() + BOOT_SECONDS)
        client = AgentClient(reader, writer)
        await client.hello(timeout=BOOT_SECONDS)
        yield guest, client
    finally:
        await guest.destroy()


async def _sh(client: AgentClient, script: str, cwd: str | None = None) -> tuple[int, str, str]:
    out = Output()
    status = await client.exec(["sh", "-c", script], cwd=cwd, timeout=120, on_output=out)
    return status.exit_code, bytes(out.stdout).decode(), bytes(out.stderr).decode()


def _df_mib(df_output: str) -> tuple[int, int]:
    """(size, available) in MiB from ``df -m /`` output."""
    fields = df_output.strip().splitlines()[-1].split()
    return int(fields[1]), int(fields[3])


async def test_busybox_image_as_its_user_then_fresh_as_root(
    backend: QemuBackend, tmp_path: Path
) -> None:
    image_file = _busybox_image(tmp_path)
    digest = _sha256(image_file)
    config = ImageConfig(
        env=(("PATH", "/bin:/opt/nowhere"), ("GREETING", "from the image")),
        user="app",
        working_dir="/ignored",
    )
    image = UserImage(
        key="sha256:" + "0" * 64,
        source="test:busybox",
        rootfs=image_file,
        config=config,
        size_bytes=image_file.stat().st_size,
    )
    seed = tmp_path / "repo"
    (seed / "src").mkdir(parents=True)
    (seed / "src/main.txt").write_text("hello\n")
    await backend.prepare()

    # Boot 1: the image's user, its Env, the default (>= 2 GiB) root disk.
    run1 = fresh_dir(tmp_path / "run-1")
    spec = GuestSpec("img-1", run1, BOOT_SECONDS, workspace=seed, image=image)
    async with _booted(backend, spec) as (guest, client):
        code, out, err = await _sh(
            client,
            "id -u; id -g; id -G; echo $PATH; echo $HOME; echo $GREETING; pwd;"
            " cat /etc/os-release; df -m / | tail -1; stat -c '%u %n' . src src/main.txt;"
            " grep ' /tmp ' /proc/mounts | cut -d' ' -f3;"
            " test -e /usr/bin/python3 || echo no-python",
        )
        assert code == 0, err
        lines = out.splitlines()
        assert lines[:2] == ["1000", "1000"]
        assert sorted(lines[2].split()) == ["1000", "2000"]
        assert lines[3:7] == ["/bin:/opt/nowhere", "/home/app", "from the image", "/workspace"]
        assert lines[7] + "\n" == MARKER
        size, avail = _df_mib(lines[8])
        assert avail >= 2048, lines[8]
        assert lines[9:12] == ["1000 .", "1000 src", "1000 src/main.txt"]
        assert lines[12:] == ["tmpfs", "no-python"]

        # The user writes its home and the workspace, not the image's /etc.
        code, out, err = await _sh(
            client,
            "echo mine > /home/app/note && cat /home/app/note && echo more >> src/main.txt"
            " && (echo x > /etc/hacked 2>/dev/null && echo wrote-etc || echo etc-refused)",
        )
        assert (code, out) == (0, "mine\netc-refused\n"), err

        # A streamed workspace is owned by the user too; a missing program is 127.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo("streamed/file.txt")
            info.size = 3
            tf.addfile(info, io.BytesIO(b"hi\n"))
        stats = await client.send_workspace([buf.getvalue()], read_only=False)
        assert stats.files == 1
        code, out, _ = await _sh(client, "stat -c %u streamed streamed/file.txt")
        assert out.split() == ["1000", "1000"]
        code, _, err = await _sh(client, "python3 -c 1")
        assert code == 127
        if shutil.which("musl-gcc") is not None:
            code, out, err = await _sh(client, "hello-musl")
            assert (code, out) == (0, "musl: uid 1000, from the image\n"), err
        # A read-only workspace binds read-only inside the image's root.
        empty = io.BytesIO()
        tarfile.open(fileobj=empty, mode="w").close()
        await client.send_workspace([empty.getvalue()], read_only=True)
        code, out, _ = await _sh(client, "touch x 2>&1 || echo refused; cat src/main.txt")
        assert out.splitlines()[-2:] == ["refused", "hello"] or "Read-only" in out, out
        assert out.endswith("hello\nmore\n"), out

        plan = guest.plan_path.read_text()
        assert str(image_file) in plan
        assert "readonly=on" in plan
        assert "scratch_disk_ms" in guest.timings
    assert not (run1 / "scratch.ext4").exists()
    assert not (run1 / "workspace.ext4").exists()
    assert _sha256(image_file) == digest

    # Boot 2: root (User ""), a 3 GiB disk_mib, more memory; the first run's writes are gone.
    run2 = fresh_dir(tmp_path / "run-2")
    as_root = UserImage(
        key=image.key,
        source=image.source,
        rootfs=image_file,
        config=ImageConfig(),
        size_bytes=image.size_bytes,
    )
    spec = GuestSpec("img-2", run2, BOOT_SECONDS, image=as_root, disk_mib=3072, memory_mib=320)
    async with _booted(backend, spec) as (guest, client):
        code, out, err = await _sh(
            client,
            "id -u; echo $HOME; echo $PATH; test -e /home/app/note && echo kept || echo gone;"
            " echo x > /etc/written && cat /etc/written;"
            " df -m / | tail -1; df -m /workspace | tail -1;"
            " grep MemTotal /proc/meminfo; cat /etc/hostname; grep -c localhost /etc/hosts",
            cwd="/",
        )
        assert code == 0, err
        lines = out.splitlines()
        assert lines[:5] == [
            "0",
            "/root",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "gone",
            "x",
        ]
        for df_line in lines[5:7]:
            size, _ = _df_mib(df_line)
            assert 2900 <= size <= 3072, df_line
        mem_kib = int(lines[7].split()[1])
        assert 256 * 1024 < mem_kib <= 320 * 1024
        assert lines[8:] == ["cleanroom", "2"]
    assert _sha256(image_file) == digest


async def test_unusable_image_refuses_to_run_anything(backend: QemuBackend, tmp_path: Path) -> None:
    """An image the guest cannot mount: the agent answers, but every exec and
    workspace request fails with ``image_failed``; nothing runs in the runtime's root."""
    bogus = tmp_path / "not-ext4.img"
    bogus.write_bytes(b"\0" * (4 << 20))
    image = UserImage(
        key="sha256:" + "1" * 64,
        source="test:bogus",
        rootfs=bogus,
        config=ImageConfig(),
        size_bytes=bogus.stat().st_size,
    )
    await backend.prepare()
    spec = GuestSpec("img-bad", fresh_dir(tmp_path / "run"), BOOT_SECONDS, image=image)
    async with _booted(backend, spec) as (guest, client):
        with pytest.raises(AgentRemoteError) as info:
            await _sh(client, "echo ran")
        assert info.value.remote_code == "image_failed"
        with pytest.raises(AgentRemoteError) as info:
            await client.send_workspace([b""], read_only=False)
        assert info.value.remote_code == "image_failed"
        await client.configure(entropy_seed=b"x" * 32)  # the session itself goes on
        assert "user image:" in guest.console_path.read_text(errors="replace")
