"""The wire models' pydantic schemas, generated once per process.

FastAPI builds a ``TypeAdapter`` for every parameter and response of every route,
each time an app is created, and pydantic regenerates a stdlib dataclass's schema
every time. With ``use_attribute_docstrings`` that means reading the class's
source again: Python 3.11's ``inspect`` parses the whole ``cleanroom.models``
module for each class, which made building an app cost most of a server's
start-up, and two threads parsing at once can hit a CPython 3.11 bug
("AST constructor recursion depth mismatch"). pydantic reuses a schema a class
carries in its own ``__pydantic_core_schema__`` (as it does for its own
dataclasses), so :func:`prepare_wire_schemas` generates each wire class's schema
once, under a lock, and stores it there.
"""

from __future__ import annotations

import threading

from pydantic import TypeAdapter

from cleanroom._fields import Wire

__all__ = ["prepare_wire_schemas"]

_lock = threading.Lock()


def _wire_classes() -> list[type[Wire]]:
    found: list[type[Wire]] = []
    pending = list(Wire.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def prepare_wire_schemas() -> None:
    """Give every wire dataclass defined so far its complete pydantic schema, once.
    Idempotent and thread-safe; later calls cost a dictionary lookup per class."""
    with _lock:
        for cls in _wire_classes():
            if "__pydantic_core_schema__" not in cls.__dict__:
                # The class's own dict only: a subclass must not reuse its base's schema.
                cls.__pydantic_core_schema__ = TypeAdapter(cls).core_schema  # type: ignore[attr-defined]
