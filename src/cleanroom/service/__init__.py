"""Contexts, runs and run records: the layer between the server and the backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cleanroom.service import types
from cleanroom.service.api import ServiceAPI
from cleanroom.service.types import *  # noqa: F403 - the values that cross the boundary

if TYPE_CHECKING:
    from cleanroom.service.service import Service

__all__ = ["Service", "ServiceAPI"]
__all__ += types.__all__


def __getattr__(name: str) -> Any:
    # Service pulls in backends, policy and images: load it only when asked for,
    # so that clients importing the value types stay light.
    if name == "Service":
        from cleanroom.service.service import Service  # noqa: PLC0415

        return Service
    raise AttributeError(name)
