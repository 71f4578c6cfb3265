"""Debian package lists built with mmdebstrap from the host's configured archive."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import pytest
from ocitools import debugfs

from cleanroom.errors import ImageUnavailable
from cleanroom.images import build_debian_image
from cleanroom.images.aptsuite import host_suite
from cleanroom.images.debimage import resolve_debian_packages
from cleanroom.policy import DebianImage


def test_unknown_package_is_image_unavailable(image_cache: Path) -> None:
    with pytest.raises(ImageUnavailable) as info:
        resolve_debian_packages(DebianImage(None, ("no-such-package-cleanroom",)))
    assert info.value.details["cause"] == "not_found"


@pytest.mark.archive
def test_unknown_suite_is_image_unavailable(image_cache: Path) -> None:
    with pytest.raises(ImageUnavailable) as info:
        build_debian_image(DebianImage("no-such-suite", ("hello",)))
    assert info.value.details["cause"] == "not_found"
    assert info.value.details["suite"] == "no-such-suite"
    assert not [p for p in image_cache.iterdir() if not p.name.startswith(".")]


@pytest.mark.archive
def test_another_suite_resolves_from_its_own_lists(image_cache: Path) -> None:
    other = "trixie" if host_suite() != "trixie" else "bookworm"
    host_key, host_set = resolve_debian_packages(DebianImage(None, ("hello",)))
    key, resolved = resolve_debian_packages(DebianImage(other, ("hello",)))
    assert key != host_key
    assert set(resolved) != set(host_set)
    assert any(item.startswith("hello=") for item in resolved)
    sources = list((image_cache / ".apt" / other / "sources").iterdir())
    assert sources
    assert all(host_suite() not in p.read_text().split() for p in sources)
    # Resolved again with the same lists: the same key, from the resolution cache.
    assert resolve_debian_packages(DebianImage(other, ("hello",)))[0] == key


def test_resolution_is_stable_and_depends_on_the_set(image_cache: Path) -> None:
    a_key, a_set = resolve_debian_packages(DebianImage(None, ("hello",)))
    assert a_key == resolve_debian_packages(DebianImage(host_suite(), ("hello",)))[0]
    assert any(item.startswith("hello=") for item in a_set)
    assert any(item.startswith("apt=") for item in a_set)
    assert any(item.startswith("coreutils=") for item in a_set)  # the essential set
    b_key, _ = resolve_debian_packages(DebianImage(None, ("hello", "ca-certificates")))
    assert b_key != a_key


@pytest.mark.archive
def test_mmdebstrap_build_runs_maintainer_scripts_and_is_cached(
    image_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (run scripts/setup)")
    spec = DebianImage(None, ("ca-certificates", "hello"))
    cached = build_debian_image(spec)
    image = cached.image
    assert image.source == f"debian:{host_suite()}:ca-certificates,hello"
    assert stat.S_IMODE(image.rootfs.stat().st_mode) == 0o444
    assert dict(image.config.env)["PATH"].endswith("/usr/bin:/sbin:/bin")
    rootfs = image.rootfs
    # Written by ca-certificates' postinst (update-ca-certificates).
    bundle = debugfs(rootfs, "stat /etc/ssl/certs/ca-certificates.crt")
    assert "Type: regular" in bundle
    size = re.search(r"Project: +\d+ +Size: (\d+)", bundle)
    assert size is not None
    assert int(size.group(1)) > 100_000
    assert "Type: regular" in debugfs(rootfs, "stat /usr/bin/hello")
    # Made by the alternatives system and by base-passwd's maintainer scripts.
    assert "Type: symlink" in debugfs(rootfs, "stat /etc/alternatives/awk")
    assert "root:x:0:0" in debugfs(rootfs, "cat /etc/passwd")
    # What was installed is exactly the resolved set the image is keyed by.
    installed = set()
    for stanza in debugfs(rootfs, "cat /var/lib/dpkg/status").split("\n\n"):
        fields = dict(re.findall(r"^(Package|Version|Architecture): (\S+)$", stanza, re.M))
        if fields:
            installed.add(f"{fields['Package']}={fields['Version']}:{fields['Architecture']}")
    key, resolved = resolve_debian_packages(spec)
    assert image.key == key
    assert installed == set(resolved)
    # The same set again is a cache hit: mmdebstrap cannot even be found now.
    empty = tmp_path / "bin"
    empty.mkdir()
    (empty / "apt-get").symlink_to(shutil.which("apt-get") or "apt-get")
    (empty / "apt-cache").symlink_to(shutil.which("apt-cache") or "apt-cache")
    monkeypatch.setenv("PATH", str(empty))
    assert build_debian_image(DebianImage(None, ("hello", "ca-certificates"))).image == image
