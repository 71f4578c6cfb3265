"""Unit tests of the user image layers: strict OCI JSON, registry transport flags, the cache."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from images_fixtures import PushedImages

from cleanroom.errors import ImageUnavailable
from cleanroom.images import check_disk_fits, list_user_images, pull_oci_image
from cleanroom.images.ocijson import parse_config, parse_json, parse_manifest, pick_platform
from cleanroom.images.skopeo import auth_file, is_loopback_registry, tls_flag
from cleanroom.images.userimage import ImageConfig
from cleanroom.policy import parse_image_ref

D = "sha256:" + "a" * 64


def test_json_documents_are_strict() -> None:
    with pytest.raises(ImageUnavailable, match="not valid JSON"):
        parse_json(b'{"a": 1, "a": 2}', "manifest")
    with pytest.raises(ImageUnavailable, match="not valid JSON"):
        parse_json(b"\xff", "manifest")
    with pytest.raises(ImageUnavailable, match="not a JSON object"):
        parse_json(b"[]", "manifest")
    with pytest.raises(ImageUnavailable, match="not valid JSON"):
        parse_json(b"[" * 100_000, "manifest")


def test_manifest_fields_are_checked() -> None:
    good = {"schemaVersion": 2, "config": {"digest": D}, "layers": [{"digest": D}]}
    assert parse_manifest(good).layers == (D,)
    with pytest.raises(ImageUnavailable, match="layers"):
        parse_manifest({**good, "layers": [{"digest": "sha256:xyz"}]})
    with pytest.raises(ImageUnavailable, match="unsupported manifest type"):
        parse_manifest({**good, "mediaType": "application/vnd.oci.image.index.v1+json"})
    with pytest.raises(ImageUnavailable, match="unsupported manifest type"):
        parse_manifest({**good, "schemaVersion": 1})


def test_config_honours_env_user_workdir_only_for_linux_amd64() -> None:
    config = parse_config(
        {
            "os": "linux",
            "architecture": "amd64",
            "config": {
                "Env": ["PATH=/x", "EMPTY=", "EQ=a=b"],
                "User": "app",
                "WorkingDir": "/w",
                "Entrypoint": ["/bin/false"],
                "Cmd": ["ignored"],
            },
        }
    )
    assert config == ImageConfig((("PATH", "/x"), ("EMPTY", ""), ("EQ", "a=b")), "app", "/w")
    assert parse_config({"os": "linux", "architecture": "amd64"}) == ImageConfig()
    with pytest.raises(ImageUnavailable) as info:
        parse_config({"os": "linux", "architecture": "arm64"})
    assert info.value.details["cause"] == "no_platform"
    for env in (["NOEQUALS"], ["=x"], [1], "PATH=/x"):
        with pytest.raises(ImageUnavailable, match="Env"):
            parse_config({"os": "linux", "architecture": "amd64", "config": {"Env": env}})
    with pytest.raises(ImageUnavailable, match="User"):
        parse_config({"os": "linux", "architecture": "amd64", "config": {"User": 0}})


def test_pick_platform() -> None:
    index = {
        "manifests": [
            {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": D, "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }
    assert pick_platform(index) == D
    with pytest.raises(ImageUnavailable) as info:
        pick_platform({"manifests": index["manifests"][:1]})
    assert info.value.details["platforms"] == ["linux/arm64"]


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.9.9.9", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
        ("localhost.example.com:5000", False),
        ("docker.io", False),
    ],
)
def test_loopback_registries_may_be_plain_http(registry: str, loopback: bool) -> None:
    assert is_loopback_registry(registry) is loopback
    expected = "false" if loopback else "true"
    assert tls_flag(registry, ()) == [f"--src-tls-verify={expected}"]
    assert tls_flag(registry, (registry,), src=False) == ["--tls-verify=false"]


def test_auth_file_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_file() is None
    docker = tmp_path / ".docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text("{}")
    assert auth_file() == docker
    monkeypatch.setenv("REGISTRY_AUTH_FILE", "/elsewhere.json")
    assert auth_file() == Path("/elsewhere.json")


def test_concurrent_pulls_of_one_ref_build_once(
    oci_images: PushedImages, image_cache: Path
) -> None:
    ref = parse_image_ref(oci_images.refs["bb"])
    results: list[object] = []

    def pull() -> None:
        try:
            results.append(pull_oci_image(ref).image)
        except ImageUnavailable as exc:
            results.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    assert results[0] == results[1] == results[2]
    assert len(list_user_images()) == 1


def test_damaged_entry_is_ignored_then_replaced(
    oci_images: PushedImages, image_cache: Path
) -> None:
    ref = parse_image_ref(oci_images.refs["bb"])
    cached = pull_oci_image(ref)
    meta = cached.image.rootfs.parent / "image.json"
    data = json.loads(meta.read_text())
    data["size_bytes"] += 1
    meta.write_text(json.dumps(data))
    assert list_user_images() == []
    again = pull_oci_image(ref)
    assert again.image.key == ref.digest
    assert list_user_images() == [again]


def test_disk_too_small_for_the_image(oci_images: PushedImages, image_cache: Path) -> None:
    cached = pull_oci_image(parse_image_ref(oci_images.refs["bb"]))
    check_disk_fits(cached, 64)
    with pytest.raises(ImageUnavailable) as info:
        check_disk_fits(cached, 0)
    assert info.value.details["disk_mib"] == 0
