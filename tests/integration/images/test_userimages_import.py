"""``import_image``: docker save archives, OCI archives and layouts, root filesystem tarballs."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from images_fixtures import PushedImages
from ocitools import debugfs, docker_archive, run

from cleanroom.errors import ImageUnavailable
from cleanroom.images import import_image, pull_oci_image
from cleanroom.images.importer import DEFAULT_PATH, detect_archive
from cleanroom.images.usercache import list_user_images
from cleanroom.policy import parse_image_ref


def _check_busybox_image(rootfs: Path) -> None:
    etc = debugfs(rootfs, "ls /etc")
    assert "secret" in etc
    assert "gone" not in etc
    assert "User:  1000   Group:  1000" in debugfs(rootfs, "stat /home/u/f")


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "oci"])
def test_import_image_archives(
    kind: str, oci_images: PushedImages, image_cache: Path, tmp_path: Path
) -> None:
    target = tmp_path / f"img-{kind}"
    dest = f"{kind}:{target}" + (":test/bb:latest" if kind == "docker-archive" else "")
    if kind == "oci":
        dest += ":only"
    run("skopeo", "copy", "--quiet", f"oci:{oci_images.layout}:bb", dest)
    assert detect_archive(target) == kind
    cached = import_image(target)
    image = cached.image
    assert image.source == f"import:{target.name}"
    assert cached.origin["kind"] == kind
    assert image.config.user == "1000:1000"
    _check_busybox_image(image.rootfs)
    # The printed ref is a policy ref that finds the image without any registry.
    ref = parse_image_ref(image.key)
    assert ref.is_local
    assert pull_oci_image(ref).image == image
    # Importing the same content again is a cache hit.
    assert import_image(target, name="again").image == image
    assert len(list_user_images()) == 1


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def test_import_rootfs_tarball(image_cache: Path, tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "export.tar.gz",
        [
            (_info("./", tarfile.DIRTYPE), None),
            (_info("./bin", tarfile.DIRTYPE), None),
            (_info("./bin/busybox", mode=0o4755), Path("/bin/busybox").read_bytes()),
            (_info("./bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"), None),
            (_info("./etc", tarfile.DIRTYPE), None),
            (_info("./etc/shadow", mode=0o600), b"root:*:1::::::\n"),
            (_info("./etc/shadow-", tarfile.LNKTYPE, linkname="etc/shadow", mode=0o600), None),
            (_info("./etc/rel", tarfile.SYMTYPE, linkname="../bin/busybox"), None),
            (_info("./home", tarfile.DIRTYPE), None),
            (_info("./home/app", tarfile.DIRTYPE, uid=1000, gid=1000), None),
            (_info("./home/app/data", uid=1000, gid=1001, uname="nobody"), b"x"),
            (_info("./run/fifo", tarfile.FIFOTYPE), None),
        ],
    )
    assert detect_archive(archive) == "rootfs"
    image = import_image(archive).image
    assert image.config.env == (("PATH", DEFAULT_PATH),)
    rootfs = image.rootfs
    assert "Mode:  04755" in debugfs(rootfs, "stat /bin/busybox")
    assert 'Fast link dest: "/bin/busybox"' in debugfs(rootfs, "stat /bin/sh")
    assert "Links: 2" in debugfs(rootfs, "stat /etc/shadow")
    assert "Mode:  0600" in debugfs(rootfs, "stat /etc/shadow")
    assert "User:  1000   Group:  1001" in debugfs(rootfs, "stat /home/app/data")
    assert "Type: FIFO" in debugfs(rootfs, "stat /run/fifo")
    assert import_image(archive).image == image


HOSTILE: dict[str, list[tuple[tarfile.TarInfo, bytes | None]]] = {
    "absolute": [(_info("/tmp/cleanroom-hostile-abs"), b"x")],
    "dotdot": [(_info("a/../../cleanroom-hostile-up"), b"x")],
    "device": [(_info("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None)],
    "chardev": [(_info("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1), None)],
    "symlink-out": [(_info("etc/x", tarfile.SYMTYPE, linkname="../../../etc/passwd"), None)],
    "through-symlink": [
        (_info("up", tarfile.SYMTYPE, linkname="/tmp"), None),
        (_info("up/cleanroom-hostile-through"), b"x"),
    ],
    "hardlink-out": [(_info("h", tarfile.LNKTYPE, linkname="../../etc/passwd"), None)],
    "hardlink-absolute": [(_info("h", tarfile.LNKTYPE, linkname="/etc/passwd"), None)],
    "hardlink-dangling": [(_info("h", tarfile.LNKTYPE, linkname="nothing"), None)],
    "replace-dir-by-symlink": [
        (_info("d", tarfile.DIRTYPE), None),
        (_info("d", tarfile.SYMTYPE, linkname="/tmp"), None),
    ],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_rootfs_tarballs_are_refused(case: str, image_cache: Path, tmp_path: Path) -> None:
    archive = _tar(tmp_path / f"{case}.tar", HOSTILE[case])
    with pytest.raises(ImageUnavailable) as info:
        import_image(archive)
    assert info.value.details["cause"] == "hostile_archive", info.value.details
    assert list_user_images() == []
    assert [p.name for p in image_cache.iterdir()] == [".lock"]
    for name in ("cleanroom-hostile-abs", "cleanroom-hostile-through"):
        assert not Path("/tmp", name).exists()
    assert not (tmp_path.parent / "cleanroom-hostile-up").exists()


def test_corrupt_inputs(image_cache: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ImageUnavailable) as info:
        import_image(garbage)
    assert info.value.details["cause"] == "corrupt_archive"
    with pytest.raises(ImageUnavailable) as info:
        import_image(tmp_path / "missing.tar")
    assert info.value.details["cause"] == "not_found"
    with pytest.raises(ImageUnavailable) as info:
        import_image(tmp_path)
    assert info.value.details["cause"] == "corrupt_archive"
    truncated = tmp_path / "docker.tar"
    _tar(truncated, [(_info("manifest.json"), b'[{"Config": "nope.json", "Layers": []}]')])
    with pytest.raises(ImageUnavailable) as info:
        import_image(truncated)
    assert info.value.code == "image_unavailable"
    assert not (image_cache.exists() and [p for p in image_cache.iterdir() if p.name != ".lock"])


@pytest.mark.parametrize("case", ["absolute", "dotdot", "device", "hardlink-out"])
def test_hostile_layers_in_docker_archives_are_refused(
    case: str, image_cache: Path, tmp_path: Path
) -> None:
    archive = docker_archive(tmp_path / f"{case}.tar", HOSTILE[case])
    assert detect_archive(archive) == "docker-archive"
    with pytest.raises(ImageUnavailable) as info:
        import_image(archive)
    assert info.value.details["cause"] == "hostile_archive", info.value.details
    assert list_user_images() == []
    assert [p.name for p in image_cache.iterdir()] == [".lock"]


def test_hand_made_docker_archive_imports(image_cache: Path, tmp_path: Path) -> None:
    archive = docker_archive(
        tmp_path / "ok.tar",
        [
            (_info("bin", tarfile.DIRTYPE), None),
            (_info("bin/busybox", mode=0o755), Path("/bin/busybox").read_bytes()),
            (_info("link", tarfile.SYMTYPE, linkname="/tmp"), None),
        ],
    )
    image = import_image(archive).image
    assert "Type: regular" in debugfs(image.rootfs, "stat /bin/busybox")
