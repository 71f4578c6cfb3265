"""The caller's side of an interactive run: a pseudo-terminal's input, size and signals.

The server feeds a :class:`Terminal` from its client (keystrokes, window
resizes, signals, end of input); the run hands its input to the agent as the
command's terminal input and forwards resizes and signals while the command
runs. Memory is bounded: at most :data:`MAX_PENDING` messages wait, and
:meth:`Terminal.feed` waits for room (backpressure on the client).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cleanroom.errors import InvalidRequest

__all__ = ["MAX_PENDING", "Control", "Terminal"]

MAX_PENDING = 256


@dataclass(frozen=True)
class Control:
    """A window resize (``rows``/``cols``) or a signal (``signal``) for the command."""

    rows: int = 0
    cols: int = 0
    signal: int = 0


def _check_size(rows: int, cols: int) -> None:
    if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
        raise InvalidRequest("a terminal size is 1..65535 rows and columns")


class Terminal:
    """Input and control of one command's pseudo-terminal (``rows`` x ``cols`` at start)."""

    def __init__(self, rows: int, cols: int) -> None:
        _check_size(rows, cols)
        self.rows, self.cols = rows, cols
        self._input: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_PENDING)
        self._control: asyncio.Queue[Control] = asyncio.Queue(MAX_PENDING)
        self._closed = False

    async def feed(self, data: bytes) -> None:
        """Type ``data`` into the terminal (waits while the command is not reading)."""
        if data and not self._closed:
            await self._input.put(data)

    async def end(self) -> None:
        """No more input (the terminal gets its EOF character)."""
        if not self._closed:
            self._closed = True
            await self._input.put(None)

    async def resize(self, rows: int, cols: int) -> None:
        """Change the window size; raises ``InvalidRequest`` outside 1..65535."""
        _check_size(rows, cols)
        await self._control.put(Control(rows=rows, cols=cols))

    async def signal(self, signum: int) -> None:
        """Send ``signum`` (1..64) to the command's foreground process group."""
        if not 1 <= signum <= 64:
            raise InvalidRequest("a signal number is 1..64")
        await self._control.put(Control(signal=signum))

    async def input(self) -> AsyncIterator[bytes]:
        """The typed bytes, until :meth:`end`."""
        while (data := await self._input.get()) is not None:
            yield data

    async def controls(self) -> AsyncIterator[Control]:
        """Resizes and signals, as they come (never ends by itself)."""
        while True:
            yield await self._control.get()
