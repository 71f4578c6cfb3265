"""cleanroom: an API-first control plane for isolated command execution in microVMs."""

from __future__ import annotations

from cleanroom.errors import CleanroomError

__version__ = "0.1.0"

__all__ = ["CleanroomError", "__version__"]
