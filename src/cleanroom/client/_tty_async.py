"""An interactive run over the server's ``/v1/exec/tty`` WebSocket (asyncio).

The same session as :class:`~cleanroom.client._tty.TerminalSession`, awaitable;
the protocol is :mod:`._terminal`'s. One task may read events while others send
input and controls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed

from cleanroom.client._closing import AsyncClosing
from cleanroom.client._endpoint import Endpoint, precheck
from cleanroom.client._terminal import (
    EOF_MESSAGE,
    TTY_PATH,
    TerminalEvent,
    TerminalExit,
    TerminalState,
    TtyCall,
    resize_message,
    signal_message,
    ws_url,
)
from cleanroom.client._tty import connect_errors, tls_context

__all__ = ["AsyncTerminalSession", "open_async_terminal"]


class AsyncTerminalSession(TerminalState[ClientConnection], AsyncClosing):
    """One interactive run: send keystrokes and controls, read output until the exit.

    ``async with`` closes it; closing before the exit cancels the run.
    """

    async def send(self, data: bytes) -> None:
        """Type ``data`` into the terminal."""
        if data:
            await self._safe(data)

    async def resize(self, rows: int, cols: int) -> None:
        """Change the terminal's window size."""
        await self._safe(resize_message(rows, cols))

    async def signal(self, signum: int) -> None:
        """Send ``signum`` to the terminal's foreground process group."""
        await self._safe(signal_message(signum))

    async def eof(self) -> None:
        """No more input."""
        await self._safe(EOF_MESSAGE)

    async def _safe(self, message: str | bytes) -> None:
        # A closed connection means the run ended: the reader reports how.
        with contextlib.suppress(ConnectionClosed, OSError):
            await self._ws.send(message)

    async def events(self) -> AsyncIterator[TerminalEvent]:
        """Output as it comes, then the exit; raises the run's error."""
        with self._reading():
            async for message in self._ws:
                event = self._decoder.event(message)
                if event is not None:
                    yield event
                    if isinstance(event, TerminalExit):
                        return

    async def aclose(self) -> None:
        """Close the connection (a run still going is cancelled by the server)."""
        await self._ws.close()


async def open_async_terminal(
    endpoint: Endpoint, tty: TtyCall, timeout: float
) -> AsyncTerminalSession:
    """Start ``tty``'s exec on its terminal; raises ``ServerUnavailable``."""
    precheck(endpoint)
    start = tty.start_message()
    context = await asyncio.to_thread(tls_context, endpoint, timeout)
    with connect_errors(endpoint):
        if endpoint.uds is not None:
            ws = await unix_connect(
                str(endpoint.uds), "ws://cleanroom" + TTY_PATH, open_timeout=timeout
            )
        else:
            ws = await connect(
                ws_url(endpoint),
                open_timeout=timeout,
                ssl=context,
                additional_headers=endpoint.headers(),
            )
    session = AsyncTerminalSession(ws, endpoint)
    await session._safe(start)
    return session
