"""The runtime config's ``images`` section."""

from __future__ import annotations

import pytest

from cleanroom.config import ImagesConfig, parse_config_text
from cleanroom.errors import ConfigInvalid

D = "sha256:" + "cd" * 32


def test_images_defaults() -> None:
    assert parse_config_text("", "config.yaml").images == ImagesConfig()
    assert parse_config_text("pool: {size: 0}\n", "config.yaml").images == ImagesConfig()


def test_images_every_key() -> None:
    config = parse_config_text(
        "images:\n"
        "  insecure_registries: [Registry.Internal:5000]\n"
        "  allow_override: false\n"
        f"  default: node@{D}\n"
        "  max: {vcpus: 2, memory_mib: 1024, disk_mib: 4096}\n",
        "config.yaml",
    )
    assert config.images == ImagesConfig(
        insecure_registries=("registry.internal:5000",),
        allow_override=False,
        default=f"docker.io/library/node@{D}",
        max_vcpus=2,
        max_memory_mib=1024,
        max_disk_mib=4096,
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("images: {default: node:20}\n", "images.default: "),
        ("images: {allow_override: yes}\n", "images.allow_override"),
        ("images: {max: {vcpus: 0}}\n", "images.max.vcpus"),
        ("images: {max: {gpus: 1}}\n", "unknown key 'gpus'"),
        ("images: {mirror: x}\n", "unknown key 'mirror'"),
        ("images: {insecure_registries: [1]}\n", "images.insecure_registries[0]"),
    ],
)
def test_images_bad_values(text: str, fragment: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config_text(text, "config.yaml")
    assert any(fragment in p for p in info.value.details["problems"]), info.value.details
