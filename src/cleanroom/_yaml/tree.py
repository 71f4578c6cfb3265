"""The located YAML tree: nodes that know where they stand, and the problem list.

:class:`YamlMapping`, :class:`YamlSequence` and :class:`YamlScalar` carry the
1-based :class:`Mark` of their source; :class:`Problems` collects located
messages for one file and raises them as one error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

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
]

ScalarValue = str | int | float | bool | None


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
