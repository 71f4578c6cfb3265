"""Test helpers: a real docker-registry on 127.0.0.1 and test images made with umoci/skopeo."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BUSYBOX = Path("/bin/busybox")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Registry:
    """``docker-registry serve`` on 127.0.0.1:PORT with storage under ``root``."""

    def __init__(self, root: Path, *, htpasswd: Path | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(root / "store")}},
            "http": {"addr": self.host},
        }
        if htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "test", "path": str(htpasswd)}}
        (root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        self._log = (root / "registry.log").open("wb")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # 401 with auth: it is up
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError((root / "registry.log").read_text()) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the registry (by its PID) and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def push(self, layout: Path, tag: str, name: str, *, fmt: str | None = None) -> str:
        """Push ``layout:tag`` to ``name:tag``; the pushed manifest's digest."""
        extra = ["--format", fmt] if fmt else []
        all_flag = ["--all"] if fmt is None else []
        run(
            "skopeo", "copy", "--quiet", "--dest-tls-verify=false", *all_flag, *extra,
            f"oci:{layout}:{tag}", f"docker://{self.host}/{name}:{tag}",
        )  # fmt: skip
        raw = run(
            "skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{self.host}/{name}:{tag}"
        )  # fmt: skip
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def blob_path(self, digest: str) -> Path:
        """Where the registry stores blob ``digest`` (for corruption tests)."""
        hexd = digest.removeprefix("sha256:")
        return self.root / "store/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def run(*argv: str | Path) -> bytes:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, check=False)
    assert proc.returncode == 0, (argv, proc.stderr.decode(errors="replace"))
    return proc.stdout


def new_layout(layout: Path, tag: str) -> None:
    if not (layout / "oci-layout").exists():
        run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:{tag}")


def insert(layout: Path, tag: str, tree: Path) -> None:
    run("umoci", "insert", "--no-history", "--image", f"{layout}:{tag}", tree, "/")


def build_busybox_image(layout: Path, work: Path, tag: str = "bb", marker: str = "") -> None:
    """No Python: busybox, a symlink, a hard link, a 0600 file, a uid-1000 file with an
    xattr, and an upper layer that whites out a file and makes a directory opaque."""
    new_layout(layout, tag)
    lower = work / f"{tag}-lower"
    for sub in ("bin", "etc", "home/u", "opt/keep"):
        (lower / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, lower / "bin/busybox")
    (lower / "bin/sh").symlink_to("busybox")
    (lower / "etc/gone").write_text("deleted by the upper layer\n")
    (lower / "etc/secret").write_text("secret\n")
    (lower / "etc/secret").chmod(0o600)
    os.link(lower / "etc/secret", lower / "etc/hard")
    (lower / "etc/marker").write_text(marker or tag)
    (lower / "home/u/f").write_text("u\n")
    os.setxattr(lower / "home/u/f", "user.test", b"hello")
    os.chown(lower / "home/u/f", 1000, 1000)
    os.chown(lower / "home/u", 1000, 1000)
    (lower / "opt/keep/a").write_text("a")
    (lower / "opt/keep/b").write_text("b")
    insert(layout, tag, lower)
    run("umoci", "insert", "--no-history", "--image", f"{layout}:{tag}", "--whiteout", "/etc/gone")
    upper = work / f"{tag}-upper"
    upper.mkdir()
    (upper / "c").write_text("c")
    run(
        "umoci", "insert", "--no-history", "--image", f"{layout}:{tag}", "--opaque", upper,
        "/opt/keep",
    )  # fmt: skip
    run(
        "umoci", "config", "--no-history", "--image", f"{layout}:{tag}",
        "--config.env", "PATH=/bin:/usr/bin", "--config.env", "GREETING=a=b",
        "--config.user", "1000:1000", "--config.workingdir", "/home/u",
    )  # fmt: skip


def _add_blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def _descriptor(layout: Path, tag: str) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry["annotations"]["org.opencontainers.image.ref.name"] == tag:
            return dict(entry)
    raise KeyError(tag)


def make_index(layout: Path, tag: str, members: dict[str, str]) -> None:
    """Add ``tag``: an image index of the tags in ``members`` (tag -> architecture)."""
    manifests = []
    for member, arch in members.items():
        entry = _descriptor(layout, member)
        entry.pop("annotations", None)
        entry["platform"] = {"os": "linux", "architecture": arch}
        manifests.append(entry)
    data = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }
    ).encode()
    digest = _add_blob(layout, data)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": len(data),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))


def debugfs(image: Path, request: str) -> str:
    """``debugfs -R REQUEST`` on an ext4 file (read-only; nothing is mounted)."""
    return run("debugfs", "-R", request, image).decode()


def docker_archive(path: Path, layer_members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A hand-made ``docker save`` archive with one layer holding ``layer_members``."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for info, data in layer_members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    manifest = [{"Config": "config.json", "RepoTags": ["evil:1"], "Layers": ["layer.tar"]}]
    files = {
        "layer.tar": layer_bytes,
        "config.json": json.dumps(config).encode(),
        "manifest.json": json.dumps(manifest).encode(),
    }
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
