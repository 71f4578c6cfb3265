"""The strict JSON codec of the agent protocol's control messages.

Stdlib only: this module runs inside the guest. A payload is one JSON object
whose keys are exactly the message's fields; :func:`load` checks that (and a
nesting bound, before the decoder sees the text), :func:`get` and :func:`opt`
check each field's type (:func:`load_fields`: all of a flat dataclass's at once),
:func:`dump` and :func:`dump_fields` encode a frame.
Every failure is an :class:`AgentProtocolError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import fields

from cleanroom.agent.errors import AgentProtocolError
from cleanroom.agent.protocol import FrameType, encode_frame

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, Self, TypeVar

    from _typeshed import DataclassInstance

    T = TypeVar("T")
    D = TypeVar("D", bound=DataclassInstance)

__all__ = [
    "MAX_DEPTH",
    "FlatMessage",
    "as_object",
    "dump",
    "dump_fields",
    "get",
    "load",
    "load_fields",
    "nesting",
    "opt",
]

MAX_DEPTH = 8
"""Deepest nesting of arrays and objects a payload may have (the deepest message needs 2).

Checked before ``json.loads`` sees the payload: the decoder recurses once per
level, so a 10 KB frame of ``[[[[...`` would otherwise raise ``RecursionError``."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def dump(ftype: FrameType, obj: Mapping[str, Any]) -> bytes:
    """A frame of type ``ftype`` carrying ``obj`` as compact JSON."""
    return encode_frame(ftype, json.dumps(obj, separators=(",", ":")).encode())


class FlatMessage:
    """Base of a flat dataclass message sent as one frame of type ``FRAME`` (set,
    without an annotation, in the subclass body: a dataclass ignores it)."""

    if TYPE_CHECKING:
        FRAME: ClassVar[FrameType]
        __dataclass_fields__: ClassVar[dict[str, Any]]

    def to_frame(self) -> bytes:
        """The message as its frame (:func:`dump_fields`)."""
        return dump_fields(self.FRAME, self)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        """The message from its frame's payload (:func:`load_fields`); errors name
        the frame type (``exit: ...``)."""
        return load_fields(cls, payload, cls.FRAME.name.lower())


def as_object(value: DataclassInstance) -> dict[str, Any]:
    """A flat dataclass as its JSON object: each field under its own name, in order."""
    return {f.name: getattr(value, f.name) for f in fields(value)}


def dump_fields(ftype: FrameType, value: DataclassInstance) -> bytes:
    """A frame of type ``ftype`` carrying the flat dataclass ``value`` (see :func:`as_object`)."""
    return dump(ftype, as_object(value))


def nesting(text: str) -> int:
    """The deepest bracket nesting of JSON ``text``, brackets inside strings not counted.

    For invalid JSON it may overcount (an unterminated string's brackets count),
    never undercount the depth the decoder would reach before failing.
    """
    bare = _STRING.sub("", text)
    if bare.count("[") + bare.count("{") <= MAX_DEPTH:
        return 0  # too few openers to be too deep: skip the walk
    depth = deepest = 0
    for match in _BRACKET.finditer(bare):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def load(payload: bytes, what: str, keys: frozenset[str]) -> dict[str, Any]:
    """The JSON object in ``payload`` with exactly ``keys``; anything else (bad UTF-8,
    bad JSON, nesting past :data:`MAX_DEPTH`, another type) raises ``AgentProtocolError``."""
    try:
        text = payload.decode("utf-8")
        if nesting(text) > MAX_DEPTH:
            raise AgentProtocolError(f"{what}: JSON nested deeper than {MAX_DEPTH}")
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
        # RecursionError/MemoryError: belt and braces behind the depth check.
        raise AgentProtocolError(f"{what}: invalid JSON payload") from exc
    if not isinstance(obj, dict):
        raise AgentProtocolError(f"{what}: payload is not a JSON object")
    found = set(obj)
    if found != keys:
        unknown = sorted(found - keys)
        missing = sorted(keys - found)
        raise AgentProtocolError(f"{what}: unknown keys {unknown}, missing keys {missing}")
    return obj


def get(obj: dict[str, Any], key: str, typ: type[T], what: str) -> T:
    """``obj[key]`` if it is a ``typ`` (an int passes as a float, a bool never as a number)."""
    value = obj[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool is an int subclass; never let true/false pass as a number.
    if not isinstance(value, typ) or (typ in (int, float) and isinstance(value, bool)):
        raise AgentProtocolError(f"{what}: {key!r} must be {typ.__name__}")
    return value


def opt(obj: dict[str, Any], key: str, typ: type[T], what: str) -> T | None:
    """Like :func:`get`, but ``null`` is None."""
    return None if obj[key] is None else get(obj, key, typ, what)


_SCALARS: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
_OR_NULL = " | None"


def load_fields(cls: type[D], payload: bytes, what: str) -> D:
    """The flat dataclass ``cls`` from ``payload``, the inverse of :func:`dump_fields`:
    exactly its fields as keys, each of its declared type (``str``, ``int``, ``float``
    or ``bool``; ``X | None`` also ``null``), checked in field order. Value rules
    beyond the type are the caller's."""
    found = fields(cls)
    obj = load(payload, what, frozenset(f.name for f in found))
    values: dict[str, Any] = {}
    for f in found:
        # The field types are strings: the message modules postpone annotations.
        name = str(f.type)
        typ = _SCALARS[name.removesuffix(_OR_NULL)]
        read = opt if name.endswith(_OR_NULL) else get
        values[f.name] = read(obj, f.name, typ, what)
    return cls(**values)
