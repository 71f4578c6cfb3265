"""Pulling OCI images from a real registry on 127.0.0.1 into the user image cache.

The resulting ext4 files are inspected with debugfs, never mounted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
from images_fixtures import PushedImages
from ocitools import Registry, debugfs, docker_archive, free_port, run

from cleanroom.errors import ImageUnavailable
from cleanroom.images import pull_oci_image
from cleanroom.images.usercache import list_user_images
from cleanroom.images.userimage import ImageConfig
from cleanroom.policy import parse_image_ref


def _ls(rootfs: Path, directory: str) -> dict[str, list[str]]:
    """``debugfs ls -l`` as name -> [inode, mode, (type), uid, gid, size, ...]."""
    out: dict[str, list[str]] = {}
    for line in debugfs(rootfs, f"ls -l {directory}").splitlines():
        fields = line.split()
        if len(fields) >= 8:
            out[fields[-1]] = fields
    return out


def _stat(rootfs: Path, path: str) -> str:
    return debugfs(rootfs, f"stat {path}")


def _assert_nothing_half_written(cache: Path) -> None:
    if cache.is_dir():
        leftovers = [p.name for p in cache.iterdir() if p.name != ".lock"]
        assert all(re.fullmatch(r"[0-9a-f]{64}", n) for n in leftovers), leftovers


def test_pull_applies_layers_and_keeps_metadata(
    oci_images: PushedImages, image_cache: Path
) -> None:
    ref = parse_image_ref(oci_images.refs["bb"])
    cached = pull_oci_image(ref)
    image = cached.image
    assert image.key == ref.digest
    assert image.source == str(ref)
    assert image.rootfs.parent.parent == image_cache
    assert stat.S_IMODE(image.rootfs.stat().st_mode) == 0o444
    assert image.size_bytes == image.rootfs.stat().st_size
    assert image.config == ImageConfig(
        env=(("PATH", "/bin:/usr/bin"), ("GREETING", "a=b")),
        user="1000:1000",
        working_dir="/home/u",
    )
    rootfs = image.rootfs
    etc = _ls(rootfs, "/etc")
    assert "gone" not in etc  # the upper layer's whiteout
    assert etc["secret"][1] == "100600"
    assert etc["secret"][3:5] == ["0", "0"]
    assert etc["hard"][0] == etc["secret"][0]  # one inode: the hard link survived
    assert "Links: 2" in _stat(rootfs, "/etc/secret")
    assert sorted(n for n in _ls(rootfs, "/opt/keep") if n not in (".", "..")) == ["c"]
    sh = _stat(rootfs, "/bin/sh")
    assert "Type: symlink" in sh
    assert 'Fast link dest: "busybox"' in sh
    home = _stat(rootfs, "/home/u/f")
    assert "User:  1000   Group:  1000" in home
    assert 'user.test (5) = "hello"' in debugfs(rootfs, "ea_list /home/u/f")
    busybox_size = Path("/bin/busybox").stat().st_size
    assert f"Size: {busybox_size}\n" in _stat(rootfs, "/bin/busybox")
    assert "python" not in debugfs(rootfs, "ls /usr/bin") + debugfs(rootfs, "ls /bin")
    root = _ls(rootfs, "/")["."]
    assert root[3:5] == ["0", "0"]
    meta = json.loads((rootfs.parent / "image.json").read_text())
    assert meta["origin"] == {"kind": "oci", "ref": str(ref), "manifest": ref.digest}


def test_second_pull_is_a_cache_hit_without_skopeo(
    oci_images: PushedImages, image_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ref = parse_image_ref(oci_images.refs["bb"])
    first = pull_oci_image(ref)
    empty = tmp_path / "nobin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # skopeo cannot even be found now
    second = pull_oci_image(ref)
    assert second.image == first.image
    assert [c.image.key for c in list_user_images()] == [ref.digest]


def test_docker_schema2_manifest_keeps_its_digest(
    oci_images: PushedImages, image_cache: Path
) -> None:
    ref = parse_image_ref(oci_images.refs["v2"])
    image = pull_oci_image(ref).image
    assert image.key == ref.digest
    assert image.config.user == "1000:1000"
    assert "gone" not in _ls(image.rootfs, "/etc")


def test_multi_arch_index_resolves_to_linux_amd64(
    oci_images: PushedImages, image_cache: Path
) -> None:
    ref = parse_image_ref(oci_images.refs["multi"])
    cached = pull_oci_image(ref)
    assert cached.image.key == ref.digest
    assert cached.origin["manifest"] == parse_image_ref(oci_images.refs["bb"]).digest
    assert "bb" in debugfs(cached.image.rootfs, "cat /etc/marker")


def _unavailable(ref_text: str, **kwargs: object) -> ImageUnavailable:
    with pytest.raises(ImageUnavailable) as info:
        pull_oci_image(parse_image_ref(ref_text), **kwargs)  # type: ignore[arg-type]
    assert info.value.code == "image_unavailable"
    return info.value


def test_index_without_amd64_is_refused(oci_images: PushedImages, image_cache: Path) -> None:
    error = _unavailable(oci_images.refs["armonly"])
    assert error.details["cause"] == "no_platform"
    assert error.details["platforms"] == ["linux/arm64"]
    _assert_nothing_half_written(image_cache)


def test_unknown_digest_is_not_found(oci_images: PushedImages, image_cache: Path) -> None:
    name = oci_images.refs["bb"].partition("@")[0]
    error = _unavailable(f"{name}@sha256:{'0' * 64}")
    assert error.details["cause"] == "not_found"
    error = _unavailable(f"{oci_images.registry.host}/test/nothing@sha256:{'0' * 64}")
    assert error.details["cause"] == "not_found"
    _assert_nothing_half_written(image_cache)


def test_registry_serving_other_bytes_is_a_digest_mismatch(
    oci_images: PushedImages, image_cache: Path
) -> None:
    ref = parse_image_ref(oci_images.refs["corrupt"])
    blob = oci_images.registry.blob_path(ref.digest)
    original = blob.read_bytes()
    blob.write_bytes(original.replace(b'"schemaVersion":2', b'"schemaVersion": 2'))
    try:
        error = _unavailable(str(ref))
    finally:
        blob.write_bytes(original)
    assert error.details["cause"] == "digest_mismatch"
    assert list_user_images() == []
    _assert_nothing_half_written(image_cache)


def test_unreachable_registry(image_cache: Path) -> None:
    error = _unavailable(f"127.0.0.1:{free_port()}/x/y@sha256:{'1' * 64}")
    assert error.details["cause"] == "unreachable"
    _assert_nothing_half_written(image_cache)


def test_imported_ref_missing_from_cache(image_cache: Path) -> None:
    error = _unavailable(f"sha256:{'2' * 64}")
    assert error.details["cause"] == "not_found"
    assert "import" in error.details["hint"]


def test_auth_failure_and_credentials_from_auth_file(
    oci_images: PushedImages, image_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd (apache2-utils) is not installed")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(run("htpasswd", "-Bbn", "alice", "s3cret"))
    registry = Registry(tmp_path / "authreg", htpasswd=htpasswd)
    try:
        run(
            "skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", "alice:s3cret",
            f"oci:{oci_images.layout}:bb", f"docker://{registry.host}/private/bb:bb",
        )  # fmt: skip
        digest = oci_images.refs["bb"].partition("@")[2]
        ref = f"{registry.host}/private/bb@{digest}"
        error = _unavailable(ref)
        assert error.details["cause"] == "unauthorized"
        wrong = tmp_path / "wrong.json"
        token = base64.b64encode(b"alice:wrong").decode()
        wrong.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(wrong))
        assert _unavailable(ref).details["cause"] == "unauthorized"
        _assert_nothing_half_written(image_cache)
        # The default location, ~/.docker/config.json, with the right credentials.
        monkeypatch.delenv("REGISTRY_AUTH_FILE")
        docker = Path(os.environ["HOME"]) / ".docker"
        docker.mkdir(parents=True)
        token = base64.b64encode(b"alice:s3cret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
        image = pull_oci_image(parse_image_ref(ref)).image
        assert image.key == digest
    finally:
        registry.stop()


def test_hostile_layer_from_a_registry_stays_inside_the_image(
    oci_images: PushedImages, image_cache: Path, tmp_path: Path
) -> None:
    # Registry layers are unpacked by umoci, which resolves every path inside the
    # image's root: '..' and writes through symlinks land inside, never on the host.
    escape = f"cleanroom-escape-{free_port()}"
    up = tarfile.TarInfo(f"../../../../../tmp/{escape}")
    link = tarfile.TarInfo("lnk")
    link.type = tarfile.SYMTYPE
    link.linkname = "/tmp"
    through = tarfile.TarInfo(f"lnk/{escape}-2")
    archive = docker_archive(tmp_path / "evil.tar", [(up, b"x"), (link, None), (through, b"y")])
    name = f"{oci_images.registry.host}/test/evil"
    run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"docker-archive:{archive}",
        f"docker://{name}:1")  # fmt: skip
    raw = run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{name}:1")
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    image = pull_oci_image(parse_image_ref(f"{name}@{digest}")).image
    assert not Path("/tmp", escape).exists()
    assert not Path("/tmp", f"{escape}-2").exists()
    listing = debugfs(image.rootfs, "ls /tmp")
    assert escape in listing
    assert f"{escape}-2" in listing
