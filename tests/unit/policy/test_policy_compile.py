"""Policy parsing, validation with locations, canonical form and hashing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cleanroom.errors import PolicyInvalid, PolicyNotFound
from cleanroom.policy import (
    AllowRule,
    CompiledPolicy,
    DenyRule,
    compile_policy_text,
    find_policy,
    load_policy,
)

SRC = "cleanroom.yaml"


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyInvalid) as info:
        compile_policy_text(text, SRC)
    assert info.value.code == "policy_invalid"
    problems = info.value.details["problems"]
    assert isinstance(problems, list)
    return problems


def test_full_policy_compiles_to_normalised_rules() -> None:
    policy = compile_policy_text(
        """\
version: 1
sandbox:
  network:
    default: deny
    allow:
      - host: Bücher.Example.
        ports: [443, 80, 443]
        reason: " books "
      - host: "*.Example.TEST"
      - host: 198.51.100.0/24
        ports: [8443]
    deny:
      - host: evil.example.test
      - host: 203.0.113.5
        ports: [22]
""",
        SRC,
    )
    assert policy.allow == (
        AllowRule("*.example.test", "wildcard", (80, 443)),
        AllowRule("198.51.100.0/24", "cidr", (8443,)),
        AllowRule("xn--bcher-kva.example", "name", (80, 443), "books"),
    )
    assert policy.deny == (
        DenyRule("203.0.113.5", "ip", (22,)),
        DenyRule("evil.example.test", "name", None),
    )
    assert policy.source == Path(SRC)
    assert policy.warnings == ()
    assert [rule.host for rule in policy.allowed_names] == [
        "*.example.test",
        "xn--bcher-kva.example",
    ]
    assert [str(rule.network) for rule in policy.allowed_networks] == ["198.51.100.0/24"]


def test_minimal_policy_denies_everything() -> None:
    policy = compile_policy_text("version: 1\n", SRC)
    assert policy.allow == ()
    assert policy.deny == ()
    assert policy.default == "deny"


def test_canonical_json_and_hash() -> None:
    policy = compile_policy_text(
        "version: 1\nsandbox:\n  network:\n    allow: [{host: a.example.test, ports: [443]}]\n",
        SRC,
    )
    text = policy.canonical_json()
    assert " " not in text
    assert json.loads(text) == {
        "version": 1,
        "sandbox": {
            "network": {
                "default": "deny",
                "allow": [{"host": "a.example.test", "ports": [443], "reason": None}],
                "deny": [],
            }
        },
    }
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert policy.policy_hash == hashlib.sha256(text.encode()).hexdigest()
    assert len(policy.policy_hash) == 64


def test_hash_is_stable_under_reformatting() -> None:
    block = """\
version: 1
sandbox:
  network:
    default: deny
    allow:
      - host: api.example.test
        ports: [443, 8443]
      - host: "*.cdn.example.test"
    deny:
      - host: 192.0.2.0/24
"""
    flow = (
        "# same rules, different spelling\n"
        "{sandbox: {network: {deny: [{host: 192.0.2.0/24}], allow: ["
        "{ports: [80, 443, 80], host: '*.CDN.Example.Test.'}, "
        "{host: API.example.test., ports: [8443, 443, 443]}, "
        "{host: api.example.test, ports: [443, 8443]}]}}, version: 1}\n"
    )
    a = compile_policy_text(block, SRC)
    b = compile_policy_text(flow, "other.yaml")
    assert a == b
    assert a.policy_hash == b.policy_hash
    c = compile_policy_text(block.replace("8443", "8444"), SRC)
    assert c.policy_hash != a.policy_hash


def test_default_allow_is_rejected_with_explanation() -> None:
    problems = problems_of("version: 1\nsandbox:\n  network:\n    default: allow\n")
    assert len(problems) == 1
    assert problems[0].startswith("cleanroom.yaml:4:14: sandbox.network.default: ")
    assert "deny-by-default" in problems[0]
    other = problems_of("version: 1\nsandbox:\n  network:\n    default: maybe\n")
    assert other[0].startswith("cleanroom.yaml:4:14: sandbox.network.default: expected 'deny'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sandbox: {}\n", "cleanroom.yaml:1:1: version: required key is missing"),
        ("version: 2\n", "cleanroom.yaml:1:10: version: unsupported policy version 2"),
        ("version: '1'\n", "cleanroom.yaml:1:10: version: expected an integer"),
        ("version: true\n", "cleanroom.yaml:1:10: version: expected an integer"),
        ("- 1\n", "cleanroom.yaml:1:1: (document): expected a mapping"),
        ("", "cleanroom.yaml:1:1: the file is empty"),
        ("# only a comment\n\n", "cleanroom.yaml:1:1: the file is empty"),
        ("version: 1\n\tsandbox: {}\n", "cleanroom.yaml:2:1: tab character"),
        ("version: [1\n", "cleanroom.yaml:2:1: YAML syntax error"),
        ("version: 1\n---\nversion: 1\n", "cleanroom.yaml:2:1: YAML syntax error"),
        ("version: 1\nversion: 1\n", "cleanroom.yaml:2:1: version: duplicate key 'version'"),
        ("version: 1\nextra: 2\n", "cleanroom.yaml:2:1: extra: unknown key 'extra'"),
        ("version: &v 1\n", "cleanroom.yaml:1:10: version: anchors and aliases"),
        ("version: !custom 1\n", "cleanroom.yaml:1:10: version: unsupported YAML tag"),
        ("version: !!binary aGk=\n", "cleanroom.yaml:1:10: version: unsupported YAML tag"),
        ("version: 1\nsandbox: {network: {allow: {host: a.test}}}\n", "expected a list"),
        ("version: 1\nsandbox:\n  network: null\n", "sandbox.network: expected a mapping"),
        ("version: 1\nsandbox:\n  netwrk: {}\n", "cleanroom.yaml:3:3: sandbox.netwrk: unknown"),
    ],
)
def test_document_level_problems(text: str, expected: str) -> None:
    problems = problems_of(text)
    assert any(problem.startswith(expected) or expected in problem for problem in problems), (
        problems
    )


def test_ports_validation_reports_each_bad_port_with_location() -> None:
    text = """\
version: 1
sandbox:
  network:
    allow:
      - host: a.example.test
        ports: [443]
      - host: b.example.test
        ports: [0, "443", 443.0, true, 65536, 65535]
"""
    assert problems_of(text) == [
        "cleanroom.yaml:8:17: sandbox.network.allow[1].ports[0]: "
        "must be between 1 and 65535, got 0",
        "cleanroom.yaml:8:20: sandbox.network.allow[1].ports[1]: "
        "expected an integer, got a string ('443')",
        "cleanroom.yaml:8:27: sandbox.network.allow[1].ports[2]: "
        "expected an integer, got a number (443.0)",
        "cleanroom.yaml:8:34: sandbox.network.allow[1].ports[3]: "
        "expected an integer, got a boolean (true)",
        "cleanroom.yaml:8:40: sandbox.network.allow[1].ports[4]: "
        "must be between 1 and 65535, got 65536",
    ]


def test_every_problem_is_reported_at_once_in_source_order() -> None:
    text = """\
version: 1
sandbox:
  network:
    allow:
      - host: foo.*.com
        colour: blue
      - ports: [443]
      - host: ok.example.test
        ports: []
      - host: ok.example.test
        reason: 7
    deny:
      - host: 198.51.100.1/24
      - host: "*.evil.example.test"
        ports: "22"
      - host: https://evil.example.test
    dney: []
"""
    problems = problems_of(text)
    assert [problem.split(": ", 2)[:2] for problem in problems] == [
        ["cleanroom.yaml:5:15", "sandbox.network.allow[0].host"],
        ["cleanroom.yaml:6:9", "sandbox.network.allow[0].colour"],
        ["cleanroom.yaml:7:9", "sandbox.network.allow[1].host"],
        ["cleanroom.yaml:9:16", "sandbox.network.allow[2].ports"],
        ["cleanroom.yaml:11:17", "sandbox.network.allow[3].reason"],
        ["cleanroom.yaml:13:15", "sandbox.network.deny[0].host"],
        ["cleanroom.yaml:15:16", "sandbox.network.deny[1].ports"],
        ["cleanroom.yaml:16:15", "sandbox.network.deny[2].host"],
        ["cleanroom.yaml:17:5", "sandbox.network.dney"],
    ]


def test_duplicate_nested_keys_are_located() -> None:
    text = (
        "version: 1\nsandbox:\n  network:\n    allow:\n      - host: a.test\n        host: b.test\n"
    )
    assert problems_of(text) == [
        "cleanroom.yaml:6:9: sandbox.network.allow[0].host: "
        "duplicate key 'host' (first defined at line 5)"
    ]


def test_exact_duplicates_collapse_and_shadowed_allow_warns() -> None:
    policy = compile_policy_text(
        "version: 1\nsandbox:\n  network:\n"
        "    allow: [{host: a.test, ports: [443]}, {host: A.test., ports: [443]}]\n"
        "    deny: [{host: a.test}, {host: a.test}]\n",
        SRC,
    )
    assert len(policy.allow) == 1
    assert len(policy.deny) == 1
    assert policy.warnings == (
        "allow rule a.test:443 has no effect: a.test is denied on every port",
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_find_policy_prefers_root_file_and_warns(tmp_path: Path) -> None:
    root = write(tmp_path / "cleanroom.yaml", "version: 1\n")
    write(tmp_path / ".buildkite" / "cleanroom.yaml", "version: 2\n")
    path, warnings = find_policy(tmp_path)
    assert path == root
    assert len(warnings) == 1
    assert ".buildkite/cleanroom.yaml" in warnings[0]
    policy = load_policy(tmp_path)
    assert policy.source == root.resolve()
    assert policy.warnings == tuple(warnings)


def test_fallback_only(tmp_path: Path) -> None:
    fallback = write(
        tmp_path / ".buildkite" / "cleanroom.yaml",
        "version: 1\nsandbox:\n  network:\n    allow: [{host: a.test}]\n",
    )
    assert find_policy(tmp_path) == (fallback, [])
    policy = load_policy(tmp_path)
    assert policy.source == fallback.resolve()
    assert policy.warnings == ()


def test_fallback_problems_name_the_relative_path(tmp_path: Path) -> None:
    write(tmp_path / ".buildkite" / "cleanroom.yaml", "version: 1\nbogus: 1\n")
    with pytest.raises(PolicyInvalid) as info:
        load_policy(tmp_path)
    assert info.value.details["problems"][0].startswith(".buildkite/cleanroom.yaml:2:1: bogus:")


def test_no_policy_names_both_paths(tmp_path: Path) -> None:
    with pytest.raises(PolicyNotFound) as info:
        find_policy(tmp_path)
    assert info.value.code == "policy_not_found"
    assert "cleanroom.yaml" in info.value.message
    assert ".buildkite/cleanroom.yaml" in info.value.message
    assert info.value.details["searched"] == [
        str(tmp_path / "cleanroom.yaml"),
        str(tmp_path / ".buildkite" / "cleanroom.yaml"),
    ]


def test_non_utf8_file_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "cleanroom.yaml").write_bytes(b"version: 1\nx: \xff\n")
    with pytest.raises(PolicyInvalid) as info:
        load_policy(tmp_path)
    assert info.value.details["problems"][0].startswith("cleanroom.yaml:1:1:")


def test_compiled_policy_is_immutable() -> None:
    policy = compile_policy_text("version: 1\n", SRC)
    assert isinstance(policy, CompiledPolicy)
    with pytest.raises(AttributeError):
        policy.allow = ()  # type: ignore[misc]
