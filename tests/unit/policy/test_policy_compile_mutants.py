"""Compilation pinned where a mutation check found it loose: the canonical order of
rules that differ only in reason or ports, and the error an invalid file raises."""

from __future__ import annotations

import pytest

from cleanroom.errors import PolicyInvalid
from cleanroom.policy import compile_policy_text


def _policy(allow: str = "[]", deny: str = "[]") -> str:
    return f"version: 1\nsandbox:\n  network:\n    allow: {allow}\n    deny: {deny}\n"


def test_allow_rules_without_a_reason_sort_before_those_with_one() -> None:
    allow = "[{host: a.test, reason: Also for CI}, {host: a.test}, {host: a.test, reason: b}]"
    policy = compile_policy_text(_policy(allow=allow), "p.yaml")
    assert [rule.reason for rule in policy.allow] == [None, "Also for CI", "b"]


def test_every_port_deny_sorts_first_then_by_ports() -> None:
    deny = (
        "[{host: a.test, ports: [8080]}, {host: a.test, ports: [443]}, {host: a.test},"
        " {host: a.test, ports: [22]}, {host: a.test, ports: [80, 443]},"
        " {host: a.test, ports: [80]}]"
    )
    policy = compile_policy_text(_policy(deny=deny), "p.yaml")
    assert [rule.ports for rule in policy.deny] == [
        None,
        (22,),
        (80,),
        (80, 443),
        (443,),
        (8080,),
    ]


def test_an_invalid_file_is_named_as_a_policy() -> None:
    with pytest.raises(PolicyInvalid) as info:
        compile_policy_text("version: 2\n", "repo/cleanroom.yaml")
    assert str(info.value) == "policy_invalid: policy repo/cleanroom.yaml is invalid (1 problem)"
    assert info.value.details["source"] == "repo/cleanroom.yaml"
