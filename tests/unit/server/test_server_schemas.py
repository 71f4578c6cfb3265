"""The wire models' schemas are generated once per process: a second app reads no
source (Python 3.11 parses a whole module per class for that, and two threads
parsing at once can crash the parser)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from cleanroom._fields import Wire
from cleanroom.server.app import create_app
from cleanroom.server.schemas import prepare_wire_schemas
from cleanroom.testing import agent_service


def _all_wire() -> list[type[Any]]:
    found, pending = [], list(Wire.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_second_app_reads_no_source_and_keeps_the_docs(monkeypatch: pytest.MonkeyPatch) -> None:
    first = create_app(agent_service()).openapi()
    assert all("__pydantic_core_schema__" in cls.__dict__ for cls in _all_wire())

    def no_source(obj: object) -> Any:
        raise AssertionError(f"source of {obj!r} read again")

    monkeypatch.setattr(inspect, "getsourcelines", no_source)
    second = create_app(agent_service()).openapi()
    assert second == first
    # The field docstrings are still the schema's descriptions.
    assert "description" in str(second["components"]["schemas"])
    prepare_wire_schemas()  # idempotent
