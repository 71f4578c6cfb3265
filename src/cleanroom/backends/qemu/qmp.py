"""A minimal QMP client: the readiness and state questions the QEMU guest asks.

QMP is JSON lines; asynchronous events (``{"event": ...}``) may arrive between
a command and its reply and are skipped here (state is polled instead, which
cannot miss an event that fired before we listened).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

from cleanroom.errors import RuntimeLaunchFailed

__all__ = ["QmpClient", "QmpClosed"]

_LIMIT = 1 << 20


class QmpClosed(Exception):
    """QEMU closed the monitor (it exited) or spoke something that is not QMP."""


class QmpClient:
    """One QMP session over an already-connected socket (QEMU's end of a socketpair)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, sock: socket.socket) -> QmpClient:
        """Read the greeting and negotiate capabilities. Raises ``QmpClosed``."""
        reader, writer = await asyncio.open_connection(sock=sock, limit=_LIMIT)
        client = cls(reader, writer)
        try:
            await client._greet()
        except BaseException:
            # QEMU went away mid-greeting (a failed KVM canary, say): the stream is
            # ours to close, or it is left to the garbage collector.
            await client.close()
            raise
        return client

    async def _greet(self) -> None:
        greeting = await self._read()
        if "QMP" not in greeting:
            raise QmpClosed(f"not a QMP greeting: {greeting!r}")
        await self.execute("qmp_capabilities")

    async def _read(self) -> dict[str, Any]:
        try:
            line = await self._reader.readline()
        except (OSError, ValueError) as exc:
            raise QmpClosed(str(exc)) from exc
        if not line:
            raise QmpClosed("QMP connection closed")
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise QmpClosed(f"malformed QMP line: {line[:200]!r}") from exc
        if not isinstance(msg, dict):
            raise QmpClosed(f"malformed QMP message: {line[:200]!r}")
        return msg

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command and return its ``return`` value.

        Raises ``QmpClosed`` if QEMU went away, ``RuntimeLaunchFailed`` if the
        command itself failed (a programming or QEMU-version problem).
        """
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            self._writer.write(json.dumps(request).encode() + b"\n")
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:
            raise QmpClosed(str(exc)) from exc
        while True:
            msg = await self._read()
            if "event" in msg:
                continue
            if "error" in msg:
                raise RuntimeLaunchFailed(
                    f"QMP {command} failed: {msg['error'].get('desc', msg['error'])}",
                    details={"qmp_error": msg["error"]},
                )
            if "return" in msg:
                return msg["return"]

    async def chardev_frontend_open(self, label: str) -> bool:
        """Whether the guest side of chardev ``label`` is open (e.g. a virtserialport)."""
        devices = await self.execute("query-chardev")
        for dev in devices:
            if dev.get("label") == label:
                return bool(dev.get("frontend-open"))
        return False

    async def run_state(self) -> str:
        """The VM run state (``running``, ``internal-error``, ``guest-panicked``, ...)."""
        status = await self.execute("query-status")
        return str(status.get("status", "unknown"))

    async def close(self) -> None:
        """Close the session (idempotent)."""
        self._writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await self._writer.wait_closed()
