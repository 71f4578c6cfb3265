"""Parsing one YAML document into the located tree (see :mod:`cleanroom._yaml`)."""

from __future__ import annotations

from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from cleanroom._yaml.tree import (
    Mark,
    Problems,
    YamlEntry,
    YamlMapping,
    YamlNode,
    YamlScalar,
    YamlSequence,
    describe,
    join_index,
    join_key,
)

__all__ = ["parse_yaml"]

_TAG_PREFIX = "tag:yaml.org,2002:"
# Tags whose constructed value is one of ScalarValue; timestamps stay text (the
# schemas here never want a date, and "2001-01-01" is better reported as a bad
# string than as a date).
_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "null"})
_TEXT_TAGS = frozenset({"timestamp"})


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
