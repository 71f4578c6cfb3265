"""The value every readiness check reports (bottom layer: host, backend and CLI checks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cleanroom._fields import Wire

__all__ = ["DoctorCheck", "DoctorStatus"]

DoctorStatus = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class DoctorCheck(Wire):
    """One line of ``cleanroom doctor``."""

    name: str
    status: DoctorStatus
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
