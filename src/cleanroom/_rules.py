"""The field rules of the wire models: each constraint stated once (stdlib only).

A rule is metadata on a field's ``Annotated`` type (``Annotated[str, NoNul()]``).
:func:`cleanroom._fields.check` applies it in plain Python; its
``__get_pydantic_core_schema__`` hands the same constraint to pydantic (see
:mod:`cleanroom._fields` for why pydantic is never imported here).
"""

from __future__ import annotations

import binascii
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    "Handler",
    "NoNul",
    "NonEmpty",
    "Rule",
    "rules_of",
]

Handler = Callable[[Any], dict[str, Any]]
_NO_NUL = r"^[^\x00]*$"
_ENV_NAME = r"^[^=\x00]+$"

MAX_ENV = 1024
"""Most environment variables one request may pass."""
MAX_GLOBS = 64
"""Most artifact globs one request may carry."""
MAX_STDIN_BYTES = 512 << 10
"""Largest standard input a request may carry (decoded bytes)."""


class Rule:
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


class NoNul(Rule):
    """A string without NUL bytes (which no path or argv element can carry)."""

    def problem(self, value: Any) -> tuple[str, str] | None:
        if "\x00" in value:
            return "string_pattern_mismatch", "must not contain NUL bytes"
        return None

    def core(self) -> dict[str, Any]:
        return {"pattern": _NO_NUL}


class NonEmpty(Rule):
    """At least one character or item."""

    def problem(self, value: Any) -> tuple[str, str] | None:
        return ("too_short", "must not be empty") if len(value) == 0 else None

    def core(self) -> dict[str, Any]:
        return {"min_length": 1}


@dataclasses.dataclass(frozen=True)
class Bounds(Rule):
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


class Absolute(Rule):
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


class Argv(Rule):
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


class EnvNames(Rule):
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
class Base64(Rule):
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


class Globs(Rule):
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


def rules_of(hint: Any) -> list[Rule]:
    """The rules on ``hint``, also inside ``X | None``."""
    if typing.get_origin(hint) is typing.Annotated:
        return [m for m in hint.__metadata__ if isinstance(m, Rule)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [rule for arg in typing.get_args(hint) for rule in rules_of(arg)]
    return []
