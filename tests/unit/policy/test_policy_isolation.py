"""``sandbox.isolation`` (parsed strictly, hashed only when set, judged by mechanism) and
how a pinned policy hash is compared."""

from __future__ import annotations

import pytest

from cleanroom.errors import PolicyInvalid
from cleanroom.policy import compile_policy_text, satisfies, strongest


@pytest.mark.parametrize(
    ("isolation", "required", "expected"),
    [
        ("qemu-tcg", "any", True),
        ("qemu-tcg", "kvm", False),
        ("qemu-kvm", "kvm", True),
        ("firecracker-kvm", "kvm", True),
        ("kvm", "kvm", False),  # not <backend>-<mechanism>
        ("qemu-kvm-tcg", "kvm", False),
        ("gvisor-ptrace", "kvm", False),
        ("", "kvm", False),
    ],
)
def test_satisfies(isolation: str, required: str, expected: bool) -> None:
    assert satisfies(isolation, required) is expected  # type: ignore[arg-type]


def test_strongest() -> None:
    assert strongest() == "any"
    assert strongest(None, "any") == "any"
    assert strongest("any", "kvm", None) == "kvm"
    assert strongest("kvm", "any") == "kvm"


def test_isolation_is_part_of_the_policy_and_its_hash() -> None:
    plain = compile_policy_text("version: 1\n", "c.yaml")
    kvm = compile_policy_text("version: 1\nsandbox:\n  isolation: kvm\n", "c.yaml")
    explicit_null = compile_policy_text("version: 1\nsandbox:\n  isolation: null\n", "c.yaml")
    assert plain.isolation is None
    assert kvm.isolation == "kvm"
    assert kvm.to_dict()["sandbox"]["isolation"] == "kvm"
    assert "isolation" not in plain.to_dict()["sandbox"]  # old hashes stay as they were
    assert kvm.policy_hash != plain.policy_hash
    assert explicit_null.policy_hash == plain.policy_hash


@pytest.mark.parametrize("value", ["tcg", "KVM", "true", "[kvm]", "1"])
def test_isolation_values_are_strict(value: str) -> None:
    with pytest.raises(PolicyInvalid) as info:
        compile_policy_text(f"version: 1\nsandbox:\n  isolation: {value}\n", "c.yaml")
    assert any("sandbox.isolation" in p for p in info.value.details["problems"])


def test_a_pinned_hash_is_compared_without_prefix_or_case() -> None:
    policy = compile_policy_text("version: 1\n", "c.yaml")
    digest = policy.policy_hash
    assert policy.has_hash(digest)
    assert policy.has_hash(f" sha256:{digest.upper()} ")
    assert not policy.has_hash(digest[:-1])
    assert not policy.has_hash("")
    assert not policy.has_hash(f"sha512:{digest}")
