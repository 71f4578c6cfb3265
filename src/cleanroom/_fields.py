"""Field rules and strict dict conversion for the wire models (stdlib only).

A rule is metadata on a field's ``Annotated`` type (``Annotated[str, NoNul()]``).
It is stated once and enforced two ways: :func:`check` applies it in plain
Python (clients, service, tests), and its ``__get_pydantic_core_schema__``
hands the same constraint to pydantic when the server builds its request
validation and OpenAPI document from these dataclasses. pydantic is never
imported here: the hook receives pydantic's handler and returns the plain dict
form of a core schema, so the sync client loads none of it.

:func:`from_dict` turns JSON objects into the models: every key must be a
field, every required field present, every value of its declared type.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from cleanroom.errors import InvalidRequest

__all__ = [
    "MAX_ENV",
    "MAX_GLOBS",
    "MAX_STDIN_BYTES",
    "Absolute",
    "Argv",
    "Base64",
    "Bounds",
    "EnvNames",
    "Globs",
    "NoNul",
    "NonEmpty",
    "Wire",
    "check",
    "from_dict",
    "to_dict",
]

T = TypeVar("T")
Loc = tuple[str | int, ...]
Handler = Callable[[Any], dict[str, Any]]
_NO_NUL = r"^[^\x00]*$"
_ENV_NAME = r"^[^=\x00]+$"

MAX_ENV = 1024
"""Most environment variables one request may pass."""
MAX_GLOBS = 64
"""Most artifact globs one request may carry."""
MAX_STDIN_BYTES = 512 << 10
"""Largest standard input a request may carry (decoded bytes)."""


class Wire:
    """Base of the wire dataclasses: tells pydantic (when the server uses it) to
    forbid unknown keys and accept no coercions ("yes" is not a bool), while a
    JSON object may still stand for the dataclass itself."""

    __pydantic_config__: typing.ClassVar[dict[str, Any]] = {
        "extra": "forbid",
        "strict": True,
        "use_attribute_docstrings": True,  # the field docs below become the schema's
    }

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Handler) -> dict[str, Any]:
        schema = handler(source)
        schema["strict"] = False  # the fields stay strict; the object may come as a dict
        return schema


class _Rule:
    """A constraint on one field's value."""

    def problem(self, value: Any) -> tuple[str, str] | None:
        """What is wrong with ``value``: the error ``type`` (the one pydantic reports
        for the same constraint) and a message; ``None`` when it is fine."""
        raise NotImplementedError

    def __get_pydantic_core_schema__(self, source: Any, handler: Handler) -> dict[str, Any]:
        schema = handler(source)
        schema.update(self.core())
        return schema

    def core(self) -> dict[str, Any]:
        """The core-schema keys expressing this rule."""
        return {}


class NoNul(_Rule):
    """A string without NUL bytes (which no path or argv element can carry)."""

    def problem(self, value: Any) -> tuple[str, str] | None:
        if "\x00" in value:
            return "string_pattern_mismatch", "must not contain NUL bytes"
        return None

    def core(self) -> dict[str, Any]:
        return {"pattern": _NO_NUL}


class NonEmpty(_Rule):
    """At least one character or item."""

    def problem(self, value: Any) -> tuple[str, str] | None:
        return ("too_short", "must not be empty") if len(value) == 0 else None

    def core(self) -> dict[str, Any]:
        return {"min_length": 1}


@dataclasses.dataclass(frozen=True)
class Bounds(_Rule):
    """A number above ``gt`` and at most ``le``."""

    gt: float
    le: float

    def problem(self, value: Any) -> tuple[str, str] | None:
        if not value > self.gt:
            return "greater_than", f"must be greater than {self.gt:g}"
        if not value <= self.le:
            return "less_than_equal", f"must be at most {self.le:g}"
        return None

    def core(self) -> dict[str, Any]:
        return {"gt": self.gt, "le": self.le}


class Absolute(_Rule):
    """An absolute path, sent as a string without NUL bytes."""

    def problem(self, value: Any) -> tuple[str, str] | None:
        if "\x00" in str(value):
            return "string_pattern_mismatch", "must not contain NUL bytes"
        return None if Path(value).is_absolute() else ("value_error", "not absolute")

    def __get_pydantic_core_schema__(self, source: Any, handler: Handler) -> dict[str, Any]:
        def to_path(text: str) -> Path:
            if not Path(text).is_absolute():
                raise ValueError("not absolute")  # pydantic reports a value_error at the field
            return Path(text)

        return {
            "type": "function-after",
            "function": {"type": "no-info", "function": to_path},
            "schema": {"type": "str", "pattern": _NO_NUL, "strict": True},
        }


class Argv(_Rule):
    """A command: a non-empty list of strings without NUL bytes, held as a tuple."""

    def problem(self, value: Any) -> tuple[str, str] | None:
        if isinstance(value, str | bytes):
            return "list_type", "must be a sequence of arguments, not a string"
        if len(value) == 0:
            return "too_short", "must not be empty"
        if not all(isinstance(arg, str) for arg in value):
            return "string_type", "arguments must be strings"
        if any("\x00" in arg for arg in value):
            return "string_pattern_mismatch", "arguments must not contain NUL bytes"
        return None

    def __get_pydantic_core_schema__(self, source: Any, handler: Handler) -> dict[str, Any]:
        items = {"type": "str", "pattern": _NO_NUL, "strict": True}
        return {
            "type": "function-after",
            "function": {"type": "no-info", "function": tuple},
            "schema": {"type": "list", "items_schema": items, "min_length": 1, "strict": True},
        }


class EnvNames(_Rule):
    """An environment: names to values. A name is non-empty, without ``=`` or NUL;
    a value has no NUL. Messages never quote a value (values may be secrets)."""

    def problem(self, value: Any) -> tuple[str, str] | None:
        if not isinstance(value, dict):
            return "dict_type", "must be an object of names to values"
        if len(value) > MAX_ENV:
            return "too_long", f"must have at most {MAX_ENV} variables"
        for name, val in value.items():
            if not isinstance(name, str) or not isinstance(val, str):
                return "string_type", "names and values must be strings"
            if not name or "=" in name or "\x00" in name:
                return "string_pattern_mismatch", "names must be non-empty, without '=' or NUL"
            if "\x00" in val:
                return "string_pattern_mismatch", "values must not contain NUL bytes"
        return None

    def __get_pydantic_core_schema__(self, source: Any, handler: Handler) -> dict[str, Any]:
        return {
            "type": "dict",
            "keys_schema": {"type": "str", "pattern": _ENV_NAME, "strict": True},
            "values_schema": {"type": "str", "pattern": _NO_NUL, "strict": True},
            "max_length": MAX_ENV,
            "strict": True,
        }


def _b64_problem(value: Any, limit: int) -> tuple[str, str] | None:
    if not isinstance(value, str):
        return "string_type", "must be a base64 string"
    too_long = ("too_long", f"must decode to at most {limit} bytes")
    if len(value) > (limit + 2) // 3 * 4:
        return too_long
    try:
        decoded = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (ValueError, UnicodeEncodeError):
        return "value_error", "must be valid base64"
    return too_long if len(decoded) > limit else None


@dataclasses.dataclass(frozen=True)
class Base64(_Rule):
    """Bytes sent as a base64 string, at most ``limit`` bytes once decoded."""

    limit: int

    def problem(self, value: Any) -> tuple[str, str] | None:
        return _b64_problem(value, self.limit)

    def __get_pydantic_core_schema__(self, source: Any, handler: Handler) -> dict[str, Any]:
        limit = self.limit

        def checked(text: str) -> str:
            problem = _b64_problem(text, limit)
            if problem is not None:
                raise ValueError(problem[1])
            return text

        return {
            "type": "function-after",
            "function": {"type": "no-info", "function": checked},
            "schema": {"type": "str", "max_length": (limit + 2) // 3 * 4, "strict": True},
        }


def _glob_problem(pattern: str) -> str | None:
    if not pattern or "\x00" in pattern or pattern.startswith("/") or len(pattern) > 4096:
        return "patterns must be relative, 1..4096 characters, without NUL"
    if any(part in ("", ".", "..") for part in pattern.split("/")):
        return "patterns must be normalized (no empty, '.' or '..' component)"
    return None


class Globs(_Rule):
    """Relative, normalized glob patterns (``*``, ``?``; ``**`` spans directories)."""

    def problem(self, value: Any) -> tuple[str, str] | None:
        if isinstance(value, str | bytes):
            return "list_type", "must be a list of patterns, not a string"
        if len(value) > MAX_GLOBS:
            return "too_long", f"must have at most {MAX_GLOBS} patterns"
        if not all(isinstance(p, str) for p in value):
            return "string_type", "patterns must be strings"
        for pattern in value:
            message = _glob_problem(pattern)
            if message is not None:
                return "value_error", message
        return None

    def __get_pydantic_core_schema__(self, source: Any, handler: Handler) -> dict[str, Any]:
        def checked(items: list[str]) -> tuple[str, ...]:
            for pattern in items:
                message = _glob_problem(pattern)
                if message is not None:
                    raise ValueError(message)
            return tuple(items)

        items = {"type": "str", "min_length": 1, "max_length": 4096, "strict": True}
        return {
            "type": "function-after",
            "function": {"type": "no-info", "function": checked},
            "schema": {
                "type": "list",
                "items_schema": items,
                "max_length": MAX_GLOBS,
                "strict": True,
            },
        }


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _rules(hint: Any) -> list[_Rule]:
    """The rules on ``hint``, also inside ``X | None``."""
    if typing.get_origin(hint) is typing.Annotated:
        return [m for m in hint.__metadata__ if isinstance(m, _Rule)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [rule for arg in typing.get_args(hint) for rule in _rules(arg)]
    return []


def check(obj: Any, loc: Loc = ("body",)) -> None:
    """Apply every rule of the dataclass ``obj`` (and of nested ones); raises
    ``InvalidRequest`` whose ``details['errors']`` locates the field as the server does."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        hints = _hints(cast(type, type(obj)))
        for rule in _rules(hints[f.name]):
            problem = rule.problem(value)
            if problem is not None:
                kind, message = problem
                where = ".".join(str(p) for p in (*loc[1:], f.name))
                error = {"loc": [*loc, f.name], "msg": message, "type": kind}
                raise InvalidRequest(f"{where} {message}", details={"errors": [error]})
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check(value, (*loc, f.name))


def from_dict(cls: type[T], data: Any) -> T:
    """``cls`` built from the JSON object ``data``: unknown keys, missing fields and
    values of the wrong type raise ``InvalidRequest``; rules are then checked."""
    value: T = _convert(cls, data, ())
    return value


def _fail(loc: Loc, message: str) -> InvalidRequest:
    where = ".".join(str(p) for p in loc) or "(root)"
    return InvalidRequest(f"{where}: {message}", details={"loc": list(loc)})


def _convert(hint: Any, value: Any, loc: Loc) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _convert(args[0], value, loc)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, loc)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise _fail(loc, f"must be one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise _fail(loc, "must be a list")
        items = [_convert(args[0], item, (*loc, i)) for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(loc, "must be an object")
        return dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, loc)
    if hint is Path:
        return Path(_convert(str, value, loc))
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, bool) and type(value) is hint:
        return value
    raise _fail(loc, f"must be of type {getattr(hint, '__name__', hint)}")


def _dataclass(cls: type, value: Any, loc: Loc) -> Any:
    if not isinstance(value, dict):
        raise _fail(loc, "must be an object")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _fail((*loc, unknown[0]), "unknown key")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], (*loc, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail((*loc, name), "missing")
    instance = cls(**kwargs)
    check(instance, ("body", *loc))
    return instance


def to_dict(obj: Any, *, drop_none: bool = False) -> dict[str, Any]:
    """The JSON object for the dataclass ``obj`` (paths as strings, tuples as lists);
    with ``drop_none``, fields that are ``None`` are left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None and drop_none:
            continue
        out[f.name] = _plain(value, drop_none)
    return out


def _plain(value: Any, drop_none: bool) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value, drop_none=drop_none)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v, drop_none) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v, drop_none) for k, v in value.items()}
    return value
