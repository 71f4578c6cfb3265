"""Shared CLI output helpers: how errors and JSON are printed."""

from __future__ import annotations

import json
import sys
from typing import Any

from cleanroom.errors import CleanroomError

__all__ = ["print_json", "report_error"]


def print_json(value: Any) -> None:
    """Print ``value`` as one line of JSON on stdout."""
    sys.stdout.write(json.dumps(value, sort_keys=True) + "\n")
    sys.stdout.flush()


def report_error(exc: CleanroomError, *, as_json: bool = False) -> int:
    """Print ``exc`` (``code: message`` on stderr, or its API body as JSON on stdout).

    Returns the documented exit status for the error's class.
    """
    if as_json:
        print_json(exc.to_dict())
    else:
        sys.stderr.write(f"error[{exc.code}]: {exc.message}\n")
        problems = exc.details.get("problems")
        if isinstance(problems, list):
            for problem in problems:
                sys.stderr.write(f"  {problem}\n")
        hint = exc.details.get("hint")
        if isinstance(hint, str):
            sys.stderr.write(f"hint: {hint}\n")
    return exc.exit_code
