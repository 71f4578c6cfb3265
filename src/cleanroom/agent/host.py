"""The host end of the guest-agent protocol: an asyncio client over one byte stream.

Used by the service once a backend has connected the agent channel (a
virtio-serial socket, a vsock connection, or a socketpair in tests). One
request runs at a time; :meth:`AgentClient.signal` and
:meth:`AgentClient.resize` may be called while :meth:`AgentClient.exec`
runs. Memory is bounded: frames are decoded as they arrive and output chunks
(and the file contents of :meth:`AgentClient.changes` and
:meth:`AgentClient.artifacts`) are handed to the caller's callbacks one by
one (awaiting them is the backpressure: while they run, nothing more is read).

Failures raise :class:`~cleanroom.agent.errors.AgentError` subclasses; the
service translates them to cleanroom errors by class.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as _signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Literal

from cleanroom.agent.errors import (
    AgentDisconnected,
    AgentError,
    AgentNotReady,
    AgentProtocolError,
    AgentTimeout,
)
from cleanroom.agent.filemessages import (
    ArtifactsRequest,
    ChangesRequest,
    FileEntry,
    FileLimits,
    FileReply,
    FilesDone,
)
from cleanroom.agent.hoststream import FrameStream, aiter_chunks, checked
from cleanroom.agent.messages import (
    ConfigureRequest,
    ExecRequest,
    ExitStatus,
    GuestInfo,
    GuestNetwork,
    HostHello,
    ResizeRequest,
    SignalRequest,
    WorkspaceBegin,
    WorkspaceStats,
    parse_configured,
    parse_exit,
    parse_guest_hello,
    parse_resize,
    parse_workspace_done,
)
from cleanroom.agent.protocol import (
    HEADER_SIZE,
    PROTOCOL_VERSION,
    FrameType,
    encode_frame,
)

__all__ = [
    "EXEC_GRACE",
    "AgentClient",
    "DataCallback",
    "EntryCallback",
    "ExitStatus",
    "GuestInfo",
    "GuestNetwork",
    "OutputCallback",
    "WorkspaceStats",
]

OutputCallback = Callable[[Literal["stdout", "stderr"], bytes], Awaitable[None]]
"""Receives each output chunk, in order per stream, as it arrives."""

EntryCallback = Callable[[FileEntry], Awaitable[None]]
"""Receives each FILE_ENTRY of a CHANGES/ARTIFACTS reply, in order."""
DataCallback = Callable[[bytes], Awaitable[None]]
"""Receives the content of the last entry with ``content``, chunk by chunk."""

EXEC_GRACE = 30.0
"""Seconds beyond an exec's timeout the host waits for the guest's EXIT frame."""

_EXEC_REPLIES = frozenset({FrameType.EXIT, FrameType.ERROR})
_ABORT_REPLIES = frozenset({FrameType.ERROR, FrameType.WORKSPACE_DONE})
_FILES_REPLIES = frozenset({FrameType.ERROR, FrameType.FILES_DONE})


class AgentClient:
    """Client for one agent session over ``reader``/``writer``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        exec_grace: float = EXEC_GRACE,
    ) -> None:
        self._exec_grace = exec_grace
        self._io = FrameStream(reader, writer)
        self._op_lock = asyncio.Lock()
        self._exec_running = False

    # -- requests ------------------------------------------------------------------------------

    async def hello(self, timeout: float) -> GuestInfo:
        """Greet the guest and wait up to ``timeout`` seconds for its answer.

        The guest may not be reading yet; the hello waits in the channel.
        Raises AgentNotReady on timeout, AgentProtocolError on a version mismatch.
        """
        async with self._op_lock:
            try:
                async with asyncio.timeout(timeout):
                    await self._io.send(HostHello(PROTOCOL_VERSION).to_frame())
                    frame = await self._io.reply(FrameType.HELLO)
            except TimeoutError as exc:
                raise AgentNotReady(f"no hello from the guest agent in {timeout:g} s") from exc
        info = parse_guest_hello(frame.payload)
        if info.protocol_version != PROTOCOL_VERSION:
            raise AgentProtocolError(
                f"guest speaks protocol {info.protocol_version}, host {PROTOCOL_VERSION}"
            )
        return info

    async def configure(
        self, *, entropy_seed: bytes | None = None, network: GuestNetwork | None = None
    ) -> None:
        """Seed the guest's entropy pool and/or configure its eth0 and DNS."""
        async with self._op_lock:
            await self._io.skip_stale()
            await self._io.send(checked(ConfigureRequest(entropy_seed, network).to_frame()))
            parse_configured((await self._io.reply(FrameType.CONFIGURED)).payload)

    async def send_workspace(
        self,
        chunks: AsyncIterator[bytes] | Iterable[bytes],
        *,
        read_only: bool,
        scratch: bool = False,
    ) -> WorkspaceStats:
        """Stream a tar archive into the guest's workspace; the guest's extraction stats.

        With ``scratch`` the guest extracts into a throwaway directory and removes
        it again (a warm-up; the workspace is left as it was). A refused archive
        raises AgentRemoteError (``workspace_failed``).
        """
        async with self._op_lock:
            await self._io.skip_stale()
            await self._io.send(WorkspaceBegin(read_only, scratch).to_frame())
            try:
                async for piece in aiter_chunks(chunks):
                    await self._io.send(encode_frame(FrameType.WORKSPACE_CHUNK, piece))
            except BaseException:
                # The archive source failed (or we were cancelled): tell the guest to
                # drop the transfer; its ERROR reply is skipped by the next request.
                self._io.stale = _ABORT_REPLIES
                self._io.write_now(encode_frame(FrameType.WORKSPACE_ABORT))
                raise
            await self._io.send(encode_frame(FrameType.WORKSPACE_END))
            return parse_workspace_done((await self._io.reply(FrameType.WORKSPACE_DONE)).payload)

    async def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | AsyncIterator[bytes] | None = None,
        tty: tuple[int, int] | None = None,
        on_output: OutputCallback,
    ) -> ExitStatus:
        """Run ``argv`` in the guest; output goes to ``on_output`` as it is produced.

        ``env`` is laid over the guest defaults (PATH, HOME=/root, LANG=C.UTF-8).
        ``stdin`` None gives the command /dev/null; bytes or an async iterator
        are streamed, then EOF. A killed command reports ``exit_code`` 128+N.

        The guest enforces ``timeout`` (the result then has ``timed_out``); the
        host waits ``exec_grace`` (default :data:`EXEC_GRACE`) more before
        raising AgentTimeout. Cancelling the call sends SIGKILL to the command;
        the next request skips whatever the abandoned command still sends. A
        command that cannot start exits 127/126 with a message on stderr.

        ``tty=(rows, cols)`` runs the command on a pseudo-terminal of that size
        (its own session, the terminal its controlling one): everything it shows
        arrives as ``stdout``, ``stdin`` is typed into the terminal (EOF types
        the EOF character), :meth:`resize` changes the size and :meth:`signal`
        reaches the terminal's foreground process group (SIGINT: Ctrl-C).
        """
        request = ExecRequest(
            argv=tuple(argv),
            env=None if env is None else dict(env),
            cwd=cwd,
            timeout=timeout,
            stdin="none" if stdin is None else "stream",
            tty=tty,
        )
        async with self._op_lock:
            await self._io.skip_stale()
            await self._io.send(checked(request.to_frame()))
            self._exec_running = True
            self._io.stale = _EXEC_REPLIES
            pump_error: list[BaseException] = []
            pump = None
            if stdin is not None:
                pump = asyncio.create_task(self._pump_stdin(stdin, pump_error))
            try:
                deadline = None if timeout is None else timeout + self._exec_grace
                async with asyncio.timeout(deadline):
                    status = await self._exec_loop(on_output)
            except TimeoutError as exc:
                msg = f"no exit from the guest {self._exec_grace:g} s past the timeout"
                raise AgentTimeout(msg) from exc
            finally:
                self._exec_running = False
                if self._io.stale:
                    # Abandoned (cancelled, timed out, broken): do not leave it running.
                    self._io.write_now(SignalRequest(_signal.SIGKILL).to_frame())
                if pump is not None:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
        if pump_error:
            raise pump_error[0]
        return status

    async def _exec_loop(self, on_output: OutputCallback) -> ExitStatus:
        while True:
            frame = await self._io.reply(FrameType.STDOUT, FrameType.STDERR, FrameType.EXIT)
            if frame.type is FrameType.STDOUT:
                await on_output("stdout", frame.payload)
            elif frame.type is FrameType.STDERR:
                await on_output("stderr", frame.payload)
            else:
                self._io.stale = frozenset()
                return parse_exit(frame.payload)

    async def _pump_stdin(
        self, stdin: bytes | AsyncIterator[bytes], errors: list[BaseException]
    ) -> None:
        try:
            async for piece in aiter_chunks(stdin):
                await self._io.send(encode_frame(FrameType.STDIN, piece))
            await self._io.send(encode_frame(FrameType.STDIN_EOF))
        except AgentDisconnected:
            pass  # the exec loop reports the broken channel
        except Exception as exc:  # noqa: BLE001 -- the caller's stdin source failed
            # Truncated input must not pass for a clean EOF: kill the command instead.
            errors.append(exc)
            with contextlib.suppress(AgentError):
                await self._io.send(SignalRequest(_signal.SIGKILL).to_frame())

    async def signal(self, signum: int) -> None:
        """Send ``signum`` to the running command's process group (no-op when none runs)."""
        if self._exec_running:
            await self._io.send(SignalRequest(int(signum)).to_frame())

    async def baseline(self) -> WorkspaceStats:
        """Make the workspace as it is now the one :meth:`changes` compares against.

        For a workspace that arrived other than by :meth:`send_workspace` (a
        disk the host seeded). Files are not hashed: a changed file whose
        content may be as before comes back as modified; the host compares.
        """
        async with self._op_lock:
            await self._io.skip_stale()
            await self._io.send(encode_frame(FrameType.BASELINE))
            return parse_workspace_done((await self._io.reply(FrameType.WORKSPACE_DONE)).payload)

    async def changes(
        self, limits: FileLimits, *, on_entry: EntryCallback, on_data: DataCallback
    ) -> FilesDone:
        """What changed in the workspace since it was copied in (or :meth:`baseline`).

        Each FILE_ENTRY goes to ``on_entry``; an entry with ``content`` is followed
        by its bytes through ``on_data``. The reply is checked against
        ``limits`` and the framing rules (exact content lengths, entry count,
        bytes); a breach raises AgentProtocolError. A read-only workspace
        reports nothing. Raises AgentRemoteError ``changes_failed`` when no
        workspace was recorded or a file changed while being sent.
        """
        return await self._files(ChangesRequest(limits).to_frame(), limits, on_entry, on_data)

    async def artifacts(
        self,
        patterns: Sequence[str],
        limits: FileLimits,
        *,
        on_entry: EntryCallback,
        on_data: DataCallback,
    ) -> FilesDone:
        """The workspace's regular files matching any of ``patterns`` (relative globs), as
        :meth:`changes` delivers them. Raises ValueError for an invalid pattern."""
        frame = ArtifactsRequest(tuple(patterns), limits).to_frame()
        return await self._files(frame, limits, on_entry, on_data)

    async def _files(
        self, request: bytes, limits: FileLimits, on_entry: EntryCallback, on_data: DataCallback
    ) -> FilesDone:
        async with self._op_lock:
            await self._io.skip_stale()
            await self._io.send(checked(request))
            self._io.stale = _FILES_REPLIES
            reply = FileReply(limits)
            while True:
                frame = await self._io.reply(
                    FrameType.FILE_ENTRY, FrameType.FILE_DATA, FrameType.FILES_DONE
                )
                item = reply.feed(frame)
                if isinstance(item, FilesDone):
                    return item
                if isinstance(item, FileEntry):
                    await on_entry(item)
                else:
                    await on_data(item)

    async def resize(self, rows: int, cols: int) -> None:
        """Set the window size of the running command's terminal (no-op when none runs).

        Raises ValueError for a size outside 1..65535.
        """
        frame = ResizeRequest(int(rows), int(cols)).to_frame()
        try:
            parse_resize(frame[HEADER_SIZE:])
        except AgentProtocolError as exc:
            raise ValueError(f"invalid window size: {exc.message}") from exc
        if self._exec_running:
            await self._io.send(frame)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the guest to stop its command, sync and power off; wait at most ``timeout``.

        Never raises for a guest that is already gone or does not answer.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._io.send(encode_frame(FrameType.SHUTDOWN))
                async with self._op_lock:
                    while (await self._io.recv()).type is not FrameType.GOODBYE:
                        pass  # leftovers of an abandoned exec
        except (TimeoutError, AgentError):
            pass  # a guest that is gone or wedged is powered off by its backend

    async def close(self) -> None:
        """Close the channel (idempotent)."""
        await self._io.close()
