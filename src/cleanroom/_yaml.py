"""A strict YAML reader with source locations, shared by the policy and the runtime config.

The text is composed (never constructed) with ruamel.yaml's safe, YAML 1.2 loader
into a small located tree (:class:`YamlMapping`, :class:`YamlSequence`,
:class:`YamlScalar`), so every later check can say *where* a problem is. The
reader itself is strict: tab characters, anchors/aliases, explicit or unknown
tags, non-string keys and duplicate keys are problems, and problems are
collected (never raised one at a time) in a :class:`Problems` list whose
entries read ``<source>:<line>:<column>: <key path>: <message>`` (1-based).

The ``read_*`` helpers check one node against an expected shape, record a
problem and return ``None`` on a mismatch, so a schema walker can keep going
and report every problem in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import NoReturn

from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from cleanroom.errors import CleanroomError

__all__ = [
    "Mark",
    "Problems",
    "ScalarValue",
    "YamlEntry",
    "YamlMapping",
    "YamlNode",
    "YamlScalar",
    "YamlSequence",
    "describe",
    "join_index",
    "join_key",
    "parse_yaml",
    "read_bool",
    "read_choice",
    "read_int",
    "read_mapping",
    "read_number",
    "read_sequence",
    "read_str",
]

ScalarValue = str | int | float | bool | None

_TAG_PREFIX = "tag:yaml.org,2002:"
# Tags whose constructed value is one of ScalarValue; timestamps stay text (the
# schemas here never want a date, and "2001-01-01" is better reported as a bad
# string than as a date).
_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "null"})
_TEXT_TAGS = frozenset({"timestamp"})


@dataclass(frozen=True, order=True)
class Mark:
    """A 1-based line and column in the source text."""

    line: int
    column: int


@dataclass(frozen=True)
class YamlScalar:
    """A scalar with its YAML 1.2 core-schema value (str, int, float, bool or None)."""

    value: ScalarValue
    mark: Mark


@dataclass(frozen=True)
class YamlSequence:
    """A sequence node."""

    items: tuple[YamlNode, ...]
    mark: Mark


@dataclass(frozen=True)
class YamlEntry:
    """One mapping entry: its (string) key, where the key is, and the value node."""

    key: str
    key_mark: Mark
    value: YamlNode


@dataclass(frozen=True)
class YamlMapping:
    """A mapping node; keys are unique strings (duplicates are reported, the first is kept)."""

    entries: tuple[YamlEntry, ...]
    mark: Mark


YamlNode = YamlScalar | YamlSequence | YamlMapping


class Problems:
    """An ordered list of located problems for one source file."""

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name
        self._items: list[tuple[Mark, str]] = []

    def add(self, mark: Mark, path: str, message: str) -> None:
        """Record ``message`` about the node at ``path`` (empty path: the document itself)."""
        where = f"{self.source_name}:{mark.line}:{mark.column}"
        self._items.append((mark, f"{where}: {path}: {message}" if path else f"{where}: {message}"))

    def add_start(self, message: str) -> None:
        """Record ``message`` about the document as a whole (located at 1:1)."""
        self.add(Mark(1, 1), "", message)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def as_list(self) -> list[str]:
        """The problems as strings, in source order (stable for equal positions)."""
        return [text for _, text in sorted(self._items, key=lambda item: item[0])]

    def raise_if_any(self, error: type[CleanroomError], what: str) -> None:
        """Raise ``error`` listing every problem in ``details['problems']`` if there are any."""
        if self._items:
            self.fail(error, what)

    def fail(self, error: type[CleanroomError], what: str) -> NoReturn:
        """Raise ``error`` (``what`` names the file's role, e.g. ``policy``) with the problems."""
        count = len(self._items)
        noun = "problem" if count == 1 else "problems"
        raise error(
            f"{what} {self.source_name} is invalid ({count} {noun})",
            details={"source": self.source_name, "problems": self.as_list()},
        )


def join_key(path: str, key: str) -> str:
    """``path`` extended by a mapping key (``a.b``)."""
    return f"{path}.{key}" if path else key


def join_index(path: str, index: int) -> str:
    """``path`` extended by a sequence index (``a[1]``)."""
    return f"{path}[{index}]"


def describe(node: YamlNode) -> str:
    """A short human description of a node's type and value, for error messages."""
    if isinstance(node, YamlMapping):
        return "a mapping"
    if isinstance(node, YamlSequence):
        return "a list"
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value!r})"
    return f"a string ({value!r})"


def _mark(node: Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def _offset_mark(text: str, offset: int) -> Mark:
    before = text[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return Mark(line, column)


class _Converter:
    """Turns a composed ruamel node tree into the located tree, collecting problems."""

    def __init__(self, problems: Problems, constructor: SafeConstructor) -> None:
        self.problems = problems
        # The loader's own constructor: it knows the document's YAML version.
        self.constructor = constructor

    def convert(self, node: Node, path: str) -> YamlNode | None:
        if getattr(node, "anchor", None) is not None:
            self.problems.add(_mark(node), path, "anchors and aliases are not supported")
            return None
        tag = str(node.tag)
        if isinstance(node, MappingNode):
            if tag != _TAG_PREFIX + "map":
                return self._bad_tag(node, path, tag)
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            if tag != _TAG_PREFIX + "seq":
                return self._bad_tag(node, path, tag)
            items = []
            for index, item in enumerate(node.value):
                converted = self.convert(item, join_index(path, index))
                if converted is not None:
                    items.append(converted)
            return YamlSequence(tuple(items), _mark(node))
        assert isinstance(node, ScalarNode)
        short = tag.removeprefix(_TAG_PREFIX) if tag.startswith(_TAG_PREFIX) else None
        if short in _TEXT_TAGS:
            return YamlScalar(str(node.value), _mark(node))
        if short not in _SCALAR_TAGS:
            return self._bad_tag(node, path, tag)
        try:
            value = self.constructor.construct_object(node, deep=True)
        except (YAMLError, ValueError, OverflowError) as exc:
            self.problems.add(_mark(node), path, f"cannot read this value ({exc})")
            return None
        if not isinstance(value, str | int | float | bool | type(None)):
            return self._bad_tag(node, path, tag)
        return YamlScalar(value, _mark(node))

    def _bad_tag(self, node: Node, path: str, tag: str) -> YamlNode | None:
        """Report an explicit or unknown tag; the node is left out (always ``None``)."""
        self.problems.add(_mark(node), path, f"unsupported YAML tag {tag!r}")
        return None

    def _mapping(self, node: MappingNode, path: str) -> YamlMapping:
        entries: list[YamlEntry] = []
        seen: dict[str, Mark] = {}
        for key_node, value_node in node.value:
            key_mark = _mark(key_node)
            key = self.convert(key_node, path)
            if key is None:
                continue
            if not isinstance(key, YamlScalar) or not isinstance(key.value, str):
                self.problems.add(key_mark, path, f"keys must be strings, not {describe(key)}")
                continue
            name = key.value
            first = seen.get(name)
            if first is not None:
                self.problems.add(
                    key_mark,
                    join_key(path, name),
                    f"duplicate key {name!r} (first defined at line {first.line})",
                )
                continue
            seen[name] = key_mark
            value = self.convert(value_node, join_key(path, name))
            if value is not None:
                entries.append(YamlEntry(name, key_mark, value))
        return YamlMapping(tuple(entries), _mark(node))


def parse_yaml(text: str, problems: Problems) -> YamlNode | None:
    """Parse one YAML document into the located tree.

    Returns ``None`` for an empty document (only whitespace and comments) and
    also when the text cannot be parsed; in the second case ``problems`` says
    why. Problems inside an otherwise readable document are recorded and the
    offending node is left out of the tree.
    """
    tabs = [i for i, char in enumerate(text) if char == "\t"]
    for offset in tabs:
        problems.add(_offset_mark(text, offset), "", "tab character (use spaces)")
    if tabs:
        return None
    yaml = YAML(typ="safe", pure=True)
    try:
        root = yaml.compose(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(mark.line + 1, mark.column + 1) if mark is not None else Mark(1, 1)
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        problems.add(where, "", f"YAML syntax error: {reason or 'unreadable document'}")
        return None
    except ReaderError as exc:
        problems.add(_offset_mark(text, exc.position), "", f"unreadable character: {exc.reason}")
        return None
    except YAMLError as exc:
        problems.add(Mark(1, 1), "", f"YAML error: {exc}")
        return None
    except RecursionError:
        problems.add(Mark(1, 1), "", "document is nested too deeply")
        return None
    if root is None:
        return None
    try:
        return _Converter(problems, yaml.constructor).convert(root, "")
    except RecursionError:
        problems.add(Mark(1, 1), "", "document is nested too deeply")
        return None


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
