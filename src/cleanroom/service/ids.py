"""Identifiers and timestamps for contexts and runs."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

__all__ = ["new_cleanroom_id", "new_run_id", "utc_now"]


def new_cleanroom_id() -> str:
    """``cr-`` and 12 random hex digits (48 bits: unique per host for all practical use)."""
    return "cr-" + secrets.token_hex(6)


def new_run_id() -> str:
    """``run-`` and 12 random hex digits; short enough to derive interface names from."""
    return "run-" + secrets.token_hex(6)


def utc_now() -> str:
    """The current time as an RFC 3339 UTC timestamp with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
