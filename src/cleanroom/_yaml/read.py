"""Shape checks for one located node: each records a problem and returns None on a mismatch.

So a schema walker can keep going and report every problem in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from cleanroom._yaml.tree import (
    Mark,
    Problems,
    YamlEntry,
    YamlMapping,
    YamlNode,
    YamlScalar,
    YamlSequence,
    describe,
    join_key,
)

__all__ = [
    "read_bool",
    "read_choice",
    "read_int",
    "read_mapping",
    "read_number",
    "read_sequence",
    "read_str",
]


def read_mapping(
    node: YamlNode, path: str, problems: Problems, *, allowed: Collection[str]
) -> dict[str, YamlEntry] | None:
    """The entries of a mapping node by key; unknown keys are reported (at the key)."""
    if not isinstance(node, YamlMapping):
        problems.add(node.mark, path or "(document)", f"expected a mapping, got {describe(node)}")
        return None
    out: dict[str, YamlEntry] = {}
    for entry in node.entries:
        if entry.key not in allowed:
            expected = ", ".join(sorted(allowed))
            problems.add(
                entry.key_mark,
                join_key(path, entry.key),
                f"unknown key {entry.key!r} (expected one of: {expected})",
            )
            continue
        out[entry.key] = entry
    return out


def read_sequence(node: YamlNode, path: str, problems: Problems) -> tuple[YamlNode, ...] | None:
    """The items of a sequence node."""
    if not isinstance(node, YamlSequence):
        problems.add(node.mark, path, f"expected a list, got {describe(node)}")
        return None
    return node.items


def read_str(
    node: YamlNode, path: str, problems: Problems, *, allow_empty: bool = False
) -> str | None:
    """A string scalar (numbers, booleans and null are not strings)."""
    if not isinstance(node, YamlScalar) or not isinstance(node.value, str):
        problems.add(node.mark, path, f"expected a string, got {describe(node)}")
        return None
    if not allow_empty and not node.value.strip():
        problems.add(node.mark, path, "must not be empty")
        return None
    return node.value


def read_int(
    node: YamlNode,
    path: str,
    problems: Problems,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    """An integer scalar within ``[minimum, maximum]``; booleans, floats and strings are refused."""
    value = node.value if isinstance(node, YamlScalar) else None
    if not isinstance(value, int) or isinstance(value, bool):
        problems.add(node.mark, path, f"expected an integer, got {describe(node)}")
        return None
    return _in_range(
        value, mark=node.mark, path=path, problems=problems, minimum=minimum, maximum=maximum
    )


def read_number(
    node: YamlNode, path: str, problems: Problems, *, exclusive_minimum: float
) -> float | None:
    """An integer or finite float scalar greater than ``exclusive_minimum``."""
    value = node.value if isinstance(node, YamlScalar) else None
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        problems.add(node.mark, path, f"expected a number, got {describe(node)}")
        return None
    if value in (float("inf"), float("-inf")) or value <= exclusive_minimum:
        problems.add(node.mark, path, f"must be a finite number greater than {exclusive_minimum:g}")
        return None
    return float(value)


def read_bool(node: YamlNode, path: str, problems: Problems) -> bool | None:
    """A boolean scalar (``true``/``false``; YAML 1.2 keeps ``yes``/``no`` strings)."""
    value = node.value if isinstance(node, YamlScalar) else None
    if not isinstance(value, bool):
        problems.add(node.mark, path, f"expected true or false, got {describe(node)}")
        return None
    return value


def read_choice(
    node: YamlNode, path: str, problems: Problems, choices: Collection[str]
) -> str | None:
    """A string scalar that is one of ``choices`` (exact spelling)."""
    value = node.value if isinstance(node, YamlScalar) else None
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(choice) for choice in choices)
        problems.add(node.mark, path, f"expected one of {expected}, got {describe(node)}")
        return None
    return value


def _in_range(
    value: int,
    *,
    mark: Mark,
    path: str,
    problems: Problems,
    minimum: int | None,
    maximum: int | None,
) -> int | None:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "" if minimum is None else str(minimum)
        high = "" if maximum is None else str(maximum)
        if minimum is not None and maximum is not None:
            bounds = f"between {low} and {high}"
        elif minimum is not None:
            bounds = f"at least {low}"
        else:
            bounds = f"at most {high}"
        problems.add(mark, path, f"must be {bounds}, got {value}")
        return None
    return value
