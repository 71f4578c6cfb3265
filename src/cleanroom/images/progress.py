"""Build progress reporting: one ``Progress`` protocol, three renderers.

A build is a sequence of named steps. Each step is started, optionally
advanced with a completed/total count (bytes, packages, files), and finished.
Renderers: :class:`RichProgress` (a live bar on a terminal),
:class:`PlainProgress` (one line per event, for logs), :class:`JsonProgress`
(one JSON object per line, for machines), and :class:`NullProgress`.
"""

from __future__ import annotations

import json
import time
from typing import IO, Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar

__all__ = [
    "JsonProgress",
    "NullProgress",
    "PlainProgress",
    "Progress",
    "RichProgress",
]


class Progress(Protocol):
    """Receives build progress events. Implementations must not raise."""

    def start(self, step: str, description: str) -> None:
        """Step ``step`` begins; ``description`` is a short human sentence."""

    def advance(self, step: str, completed: int, total: int | None = None, unit: str = "") -> None:
        """Step ``step`` has ``completed`` of ``total`` units (bytes, files, packages) done."""

    def finish(self, step: str, detail: str = "") -> None:
        """Step ``step`` is done; ``detail`` summarises its result."""

    def info(self, message: str) -> None:
        """A notable event outside the step structure (cache hit, apt-get update)."""


class NullProgress:
    """Discards every event."""

    def start(self, step: str, description: str) -> None:
        """Ignore."""

    def advance(self, step: str, completed: int, total: int | None = None, unit: str = "") -> None:
        """Ignore."""

    def finish(self, step: str, detail: str = "") -> None:
        """Ignore."""

    def info(self, message: str) -> None:
        """Ignore."""


class PlainProgress:
    """One plain line per event (start, finish with elapsed time, info); advances are silent."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._started: dict[str, float] = {}

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()

    def start(self, step: str, description: str) -> None:
        """Print ``[step] description``."""
        self._started[step] = time.monotonic()
        self._write(f"[{step}] {description}")

    def advance(self, step: str, completed: int, total: int | None = None, unit: str = "") -> None:
        """Plain logs stay short: counts show only in the finish line."""

    def finish(self, step: str, detail: str = "") -> None:
        """Print ``[step] done in N.Ns: detail``."""
        elapsed = time.monotonic() - self._started.pop(step, time.monotonic())
        suffix = f": {detail}" if detail else ""
        self._write(f"[{step}] done in {elapsed:.1f}s{suffix}")

    def info(self, message: str) -> None:
        """Print the message."""
        self._write(message)


class JsonProgress:
    """One JSON object per line: ``{"event": "start"|"advance"|"finish"|"info", ...}``."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._started: dict[str, float] = {}

    def _emit(self, record: dict[str, Any]) -> None:
        self._stream.write(json.dumps(record, sort_keys=True) + "\n")
        self._stream.flush()

    def start(self, step: str, description: str) -> None:
        """Emit a start event."""
        self._started[step] = time.monotonic()
        self._emit({"event": "start", "step": step, "description": description})

    def advance(self, step: str, completed: int, total: int | None = None, unit: str = "") -> None:
        """Emit an advance event with the counts."""
        self._emit(
            {"event": "advance", "step": step, "completed": completed, "total": total, "unit": unit}
        )

    def finish(self, step: str, detail: str = "") -> None:
        """Emit a finish event with the elapsed milliseconds."""
        elapsed = time.monotonic() - self._started.pop(step, time.monotonic())
        self._emit(
            {
                "event": "finish",
                "step": step,
                "detail": detail,
                "elapsed_ms": round(elapsed * 1000),
            }
        )

    def info(self, message: str) -> None:
        """Emit an info event."""
        self._emit({"event": "info", "message": message})


class RichProgress:
    """A live progress display on a terminal (one bar per step), built on ``rich``.

    Use as a context manager so the live display is stopped even on failure.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._console = Console(file=stream, stderr=stream is None)
        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def start(self, step: str, description: str) -> None:
        """Add a bar for the step (indeterminate until the first advance)."""
        self._tasks[step] = self._bar.add_task(f"{step}: {description}", total=None)

    def advance(self, step: str, completed: int, total: int | None = None, unit: str = "") -> None:
        """Move the step's bar."""
        task = self._tasks.get(step)
        if task is not None:
            self._bar.update(task, completed=completed, total=total)

    def finish(self, step: str, detail: str = "") -> None:
        """Complete the step's bar and append the detail."""
        task = self._tasks.get(step)
        if task is None:
            return
        suffix = f" [dim]({detail})[/dim]" if detail else ""
        self._bar.update(
            task,
            total=1,
            completed=1,
            description=f"[green]✓[/green] {step}{suffix}",
        )

    def info(self, message: str) -> None:
        """Print the message above the bars."""
        self._console.print(message, markup=False)
