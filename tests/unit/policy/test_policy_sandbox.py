"""Choosing a run's image and checking its resources against the runtime config."""

from __future__ import annotations

import pytest

from cleanroom.errors import PolicyConflict, PolicyInvalid
from cleanroom.policy import (
    DebianImage,
    OciImage,
    Resources,
    check_resources,
    parse_image_ref,
    select_image,
)

D = "sha256:" + "ef" * 32
POLICY = DebianImage(None, ("git",))


def test_precedence_override_policy_default_builtin() -> None:
    override = f"node@{D}"
    assert select_image(POLICY, override=override) == OciImage(parse_image_ref(override))
    assert select_image(POLICY, default=f"x@{D}") == POLICY
    assert select_image(None, default=f"x@{D}") == OciImage(parse_image_ref(f"x@{D}"))
    assert select_image(None) is None


def test_forbidden_or_malformed_override() -> None:
    with pytest.raises(PolicyConflict) as conflict:
        select_image(POLICY, override=f"node@{D}", allow_override=False)
    assert conflict.value.details["limit"] == "images.allow_override"
    assert select_image(POLICY, allow_override=False) == POLICY
    with pytest.raises(PolicyInvalid, match="not pinned by digest"):
        select_image(POLICY, override="node:20")


def test_resources_within_and_over_the_maxima() -> None:
    caps = {"max_vcpus": 4, "max_memory_mib": 4096, "max_disk_mib": 16384}
    check_resources(Resources(), **caps)
    check_resources(Resources(vcpus=4, memory_mib=4096, disk_mib=16384), **caps)
    with pytest.raises(PolicyConflict) as info:
        check_resources(Resources(vcpus=2, memory_mib=8192), **caps)
    assert info.value.code == "policy_conflict"
    assert info.value.details == {
        "limit": "images.max.memory_mib",
        "requested": 8192,
        "maximum": 4096,
    }
    assert "images.max.memory_mib" in info.value.message
