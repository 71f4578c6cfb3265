"""``sandbox.image`` and ``sandbox.resources``: parsing, refusal, canonical form, hashing."""

from __future__ import annotations

import json

import pytest

from cleanroom.errors import PolicyInvalid
from cleanroom.policy import (
    DebianImage,
    ImageRef,
    InvalidImageRef,
    OciImage,
    Resources,
    compile_policy_text,
    parse_image_ref,
)

SRC = "cleanroom.yaml"
D = "sha256:" + "ab" * 32


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyInvalid) as info:
        compile_policy_text(text, SRC)
    assert info.value.code == "policy_invalid"
    problems = info.value.details["problems"]
    assert isinstance(problems, list)
    return problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"busybox@{D}", ImageRef("docker.io", "library/busybox", None, D)),
        (f"node:20-slim@{D}", ImageRef("docker.io", "library/node", "20-slim", D)),
        (f"org/tool@{D}", ImageRef("docker.io", "org/tool", None, D)),
        (
            f"Registry.Example.com/tools/node:1.2@{D}",
            ImageRef("registry.example.com", "tools/node", "1.2", D),
        ),
        (f"127.0.0.1:5000/a/b@{D}", ImageRef("127.0.0.1:5000", "a/b", None, D)),
        (f"localhost/x@{D}", ImageRef("localhost", "x", None, D)),
        (f"[::1]:5000/x:t@{D}", ImageRef("[::1]:5000", "x", "t", D)),
        (D, ImageRef("", "", None, D)),
    ],
)
def test_refs_parse_and_normalise(text: str, expected: ImageRef) -> None:
    ref = parse_image_ref(text)
    assert ref == expected
    assert parse_image_ref(str(ref)) == ref
    assert ref.is_local == (text == D)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("busybox", "not pinned by digest"),
        ("busybox:latest", "not pinned by digest"),
        ("registry.example.com/x:1", "not pinned by digest"),
        ("busybox@sha256:abc", "not a digest"),
        (f"busybox@{D.upper()}", "not a digest"),
        (f"busybox@sha512:{'a' * 128}", "not a digest"),
        (f"Busybox@{D}", "not a valid repository name"),
        (f"busybox:bad tag@{D}", "not a valid tag"),
        (f"x..y/z@{D}", "not a valid registry host"),
        ("", "non-empty"),
    ],
)
def test_malformed_refs_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(InvalidImageRef) as info:
        parse_image_ref(text)
    assert fragment in info.value.message


def test_policy_with_ref_compiles_and_hashes() -> None:
    text = f"version: 1\nsandbox:\n  image:\n    ref: node:20@{D}\n"
    policy = compile_policy_text(text, SRC)
    assert policy.image == OciImage(ImageRef("docker.io", "library/node", "20", D))
    assert policy.resources == Resources()
    assert json.loads(policy.canonical_json())["sandbox"]["image"] == {
        "ref": f"docker.io/library/node:20@{D}"
    }
    plain = compile_policy_text("version: 1\n", SRC)
    assert policy.policy_hash != plain.policy_hash
    # The canonical JSON is itself a policy that compiles to the same hash.
    assert compile_policy_text(policy.canonical_json(), "c").policy_hash == policy.policy_hash


def test_ref_without_digest_is_policy_invalid_with_location() -> None:
    problems = problems_of("version: 1\nsandbox:\n  image:\n    ref: node:20\n")
    assert len(problems) == 1
    assert problems[0].startswith("cleanroom.yaml:4:10: sandbox.image.ref: ")
    assert "not pinned by digest" in problems[0]


def test_debian_image_is_canonical() -> None:
    a = compile_policy_text(
        "version: 1\nsandbox:\n  image:\n    debian:\n      packages: [npm, git, nodejs, git]\n",
        SRC,
    )
    b = compile_policy_text(
        "version: 1\nsandbox: {image: {debian: {suite: null, packages: [git, nodejs, npm]}}}\n",
        SRC,
    )
    assert a.image == DebianImage(None, ("git", "nodejs", "npm"))
    assert a.policy_hash == b.policy_hash
    c = compile_policy_text(
        "version: 1\nsandbox: {image: {debian: {suite: trixie, packages: [git, nodejs, npm]}}}\n",
        SRC,
    )
    assert c.image == DebianImage("trixie", ("git", "nodejs", "npm"))
    assert c.policy_hash != a.policy_hash
    assert compile_policy_text(c.canonical_json(), "c") == c


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        ("{}", "exactly one of 'ref' and 'debian'"),
        (f"{{ref: 'x@{D}', debian: {{}}}}", "exactly one of 'ref' and 'debian'"),
        ("{tag: x}", "unknown key 'tag'"),
        ("{debian: {packages: [Git]}}", "not a Debian package name"),
        ("{debian: {packages: [git; rm]}}", "not a Debian package name"),
        ("{debian: {packages: git}}", "expected a list"),
        ("{debian: {suite: ../x}}", "not a Debian suite name"),
        ("{debian: {variant: apt}}", "unknown key 'variant'"),
        ("{ref: 5}", "expected a string"),
    ],
)
def test_bad_image_sections(image: str, fragment: str) -> None:
    problems = problems_of(f"version: 1\nsandbox:\n  image: {image}\n")
    assert any(fragment in p for p in problems), problems


def test_resources_compile_and_hash() -> None:
    policy = compile_policy_text(
        "version: 1\nsandbox:\n  resources: {vcpus: 2, memory_mib: 2048, disk_mib: 8192}\n", SRC
    )
    assert policy.resources == Resources(vcpus=2, memory_mib=2048, disk_mib=8192)
    partial = compile_policy_text("version: 1\nsandbox:\n  resources: {vcpus: 2}\n", SRC)
    assert partial.resources == Resources(vcpus=2)
    assert json.loads(partial.canonical_json())["sandbox"]["resources"] == {"vcpus": 2}
    hashes = {
        policy.policy_hash,
        partial.policy_hash,
        compile_policy_text("version: 1", SRC).policy_hash,
    }
    assert len(hashes) == 3
    # Empty resources are no resources: the hash of a policy without them is unchanged.
    empty = compile_policy_text("version: 1\nsandbox:\n  resources: {}\n", SRC)
    assert empty.policy_hash == compile_policy_text("version: 1", SRC).policy_hash


@pytest.mark.parametrize(
    ("resources", "fragment"),
    [
        ("{vcpus: 0}", "sandbox.resources.vcpus"),
        ("{vcpus: 1000}", "sandbox.resources.vcpus"),
        ("{memory_mib: -1}", "sandbox.resources.memory_mib"),
        ("{disk_mib: 1.5}", "expected an integer"),
        ("{disk_mib: '8G'}", "expected an integer"),
        ("{cpus: 2}", "unknown key 'cpus'"),
        ("[2]", "expected a mapping"),
    ],
)
def test_bad_resources(resources: str, fragment: str) -> None:
    problems = problems_of(f"version: 1\nsandbox:\n  resources: {resources}\n")
    assert any(fragment in p for p in problems), problems


def test_hash_without_image_or_resources_is_unchanged() -> None:
    # The canonical form of an image-less policy has exactly the keys it always had.
    policy = compile_policy_text("version: 1\nsandbox: {network: {default: deny}}\n", SRC)
    assert json.loads(policy.canonical_json()) == {
        "version": 1,
        "sandbox": {"network": {"default": "deny", "allow": [], "deny": []}},
    }
    assert policy.image is None
