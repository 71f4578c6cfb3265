"""Property tests: any text either compiles or raises PolicyInvalid, never anything else."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from cleanroom.errors import PolicyInvalid
from cleanroom.policy import CompiledPolicy, compile_policy_text, decide

SETTINGS = settings(max_examples=200, deadline=None)

KEYS = st.sampled_from(
    ["version", "sandbox", "network", "default", "allow", "deny", "host", "ports", "reason", "x"]
)
HOSTS = st.sampled_from(
    [
        "example.test",
        "*.example.test",
        "Bücher.Example.",
        "192.0.2.1",
        "198.51.100.0/24",
        "198.51.100.1/24",
        "2001:db8::/32",
        "foo.*.com",
        "*",
        "",
        "a_b.test",
        "https://x.test",
        "x.test:443",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    HOSTS,
    st.sampled_from(["deny", "allow", "1", "443"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=25,
)


def rule_strategy() -> st.SearchStrategy[dict[str, Any]]:
    ports = st.lists(
        st.one_of(st.integers(min_value=-5, max_value=70000), st.sampled_from(["443", 443.0])),
        max_size=4,
    )
    return st.fixed_dictionaries(
        {"host": HOSTS}, optional={"ports": ports, "reason": st.text(max_size=10)}
    )


POLICIES = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 1, 1, 2, "1"])},
    optional={
        "sandbox": st.fixed_dictionaries(
            {},
            optional={
                "network": st.fixed_dictionaries(
                    {},
                    optional={
                        "default": st.sampled_from(["deny", "allow", "other"]),
                        "allow": st.lists(rule_strategy(), max_size=4),
                        "deny": st.lists(rule_strategy(), max_size=3),
                    },
                )
            },
        )
    },
)


def dump(value: Any, *, flow: bool) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = flow
    out = io.StringIO()
    yaml.dump(value, out)
    return out.getvalue()


def check(text: str) -> CompiledPolicy | None:
    try:
        policy = compile_policy_text(text, "cleanroom.yaml")
    except PolicyInvalid as exc:
        problems = exc.details["problems"]
        assert problems, "an invalid policy must say why"
        assert all(p.startswith("cleanroom.yaml:") for p in problems)
        return None
    # A compiled policy is canonical: compiling its canonical form again is a fixed point.
    assert policy.policy_hash == compile_policy_text(policy.canonical_json(), "c").policy_hash
    return policy


@SETTINGS
@given(POLICIES, st.booleans())
def test_policy_shaped_documents_compile_or_are_invalid(value: Any, flow: bool) -> None:
    policy = check(dump(value, flow=flow))
    if policy is not None:
        for rule in policy.allow:
            assert rule.ports == tuple(sorted(set(rule.ports)))
            assert all(1 <= port <= 65535 for port in rule.ports)
        assert decide(policy, "example.test", 443, "tcp").rule


@SETTINGS
@given(VALUES, st.booleans())
def test_arbitrary_documents_compile_or_are_invalid(value: Any, flow: bool) -> None:
    check(dump(value, flow=flow))


@SETTINGS
@given(st.text(max_size=200))
def test_random_text_compiles_or_is_invalid(text: str) -> None:
    check(text)


@SETTINGS
@given(
    st.lists(
        st.sampled_from(
            [
                "version: 1",
                "sandbox:",
                "  network:",
                "    allow:",
                "      - host: a.test",
                "        ports: [443]",
                "    deny: []",
                "  - x",
                ": y",
                "&a b",
                "*a",
                "? c",
                "{",
                "]",
                "'",
                '"',
                "|",
                ">",
                "---",
                "...",
                "%YAML 1.1",
                "\t",
                "#",
                "!t x",
            ]
        ),
        max_size=12,
    )
)
def test_yaml_like_line_soup_compiles_or_is_invalid(lines: list[str]) -> None:
    check("\n".join(lines) + "\n")
