"""Field rules and strict dict conversion for the wire models (stdlib only).

The rules themselves are in :mod:`cleanroom._rules`.

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

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from cleanroom._rules import Handler, rules_of
from cleanroom.errors import InvalidRequest

__all__ = ["Wire", "check", "from_dict", "to_dict"]

T = TypeVar("T")
Loc = tuple[str | int, ...]


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


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def check(obj: Any, loc: Loc = ("body",)) -> None:
    """Apply every rule of the dataclass ``obj`` (and of nested ones); raises
    ``InvalidRequest`` whose ``details['errors']`` locates the field as the server does."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        hints = _hints(cast(type, type(obj)))
        for rule in rules_of(hints[f.name]):
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
