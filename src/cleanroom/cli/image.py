"""Placeholder: filled in by the command group's owner."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Register this module's commands on ``app``."""
