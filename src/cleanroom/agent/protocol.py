"""Sans-IO framing of the guest-agent protocol, shared by the host and the guest.

Stdlib only: this module runs inside the guest.

Wire format
===========

One byte stream (virtio-serial port, vsock connection, or a socketpair/pipes
in tests) carries a sequence of frames::

    +----------------------+-------------+------------------------+
    | length: u32 big-end. | type: u8    | payload: length bytes  |
    +----------------------+-------------+------------------------+

``length`` counts the payload only and must not exceed :data:`MAX_PAYLOAD`
(1 MiB); the type byte must be one of :class:`FrameType`. Payloads are of
three kinds, fixed per type:

* JSON control messages: one UTF-8 JSON object, parsed strictly (unknown or
  missing keys are errors; see :mod:`cleanroom.agent.messages`);
* raw data chunks (workspace tar bytes, stdin, stdout, stderr): opaque bytes,
  at most :data:`MAX_DATA_CHUNK` per frame by convention of the senders;
* empty markers (workspace end, stdin EOF, shutdown, goodbye): length 0.

A frame that violates any of this (oversized length, unknown type, payload on
an empty marker) raises :class:`AgentProtocolError`; the receiver answers with
an ``error`` frame (code ``protocol_error``) where it can and ends the session.

Session
=======

The host speaks first (``HELLO``), the guest answers ``HELLO`` with its
versions. Then, in any order, one at a time::

    CONFIGURE                                  -> CONFIGURED | ERROR
    WORKSPACE_BEGIN, WORKSPACE_CHUNK*, WORKSPACE_END -> WORKSPACE_DONE | ERROR
    WORKSPACE_BEGIN, WORKSPACE_CHUNK*, WORKSPACE_ABORT -> ERROR workspace_failed
    EXEC, (STDIN* STDIN_EOF)?, SIGNAL*, RESIZE* -> (STDOUT | STDERR)*, EXIT | ERROR
    BASELINE                                   -> WORKSPACE_DONE | ERROR
    CHANGES                                    -> (FILE_ENTRY FILE_DATA*)*, FILES_DONE | ERROR
    ARTIFACTS                                  -> (FILE_ENTRY FILE_DATA*)*, FILES_DONE | ERROR
    SHUTDOWN                                   -> GOODBYE, then power-off / exit

While a command runs the host may send ``STDIN``/``STDIN_EOF`` (when the exec
asked for streamed stdin), ``SIGNAL`` and ``RESIZE`` (a command on a terminal:
exec ``tty``) at any time; the guest sends output chunks as the command
produces them, each stream in order, and ``EXIT`` last. ``CONFIGURED``
carries ``{}``. An aborted transfer (the host's archive source failed) may
leave part of the archive extracted. A workspace transfer records the
manifest CHANGES compares against; BASELINE records it from the workspace as
it is (a workspace disk the host seeded). A FILE_ENTRY with ``content`` is
followed by exactly its ``size`` bytes in FILE_DATA frames; an ERROR may end
the reply early (``changes_failed``). JSON fields of each message are defined
in :mod:`cleanroom.agent.messages` and :mod:`cleanroom.agent.filemessages`.

ERROR codes (stable): ``protocol_error`` (the session then ends),
``version_mismatch`` (ends too), ``busy`` (exec/configure/workspace/changes/
artifacts while a command runs), ``workspace_failed``, ``configure_failed``,
``changes_failed`` (no manifest, or the workspace changed while being sent),
``internal_error``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cleanroom.agent.errors import AgentProtocolError

__all__ = [
    "AGENT_VERSION",
    "DATA_TYPES",
    "EMPTY_TYPES",
    "ERR_BUSY",
    "ERR_CHANGES",
    "ERR_CONFIGURE",
    "ERR_IMAGE",
    "ERR_INTERNAL",
    "ERR_PROTOCOL",
    "ERR_VERSION",
    "ERR_WORKSPACE",
    "HEADER_SIZE",
    "JSON_TYPES",
    "MAX_DATA_CHUNK",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "encode_frame",
]

AGENT_VERSION = "0.2.0"
"""Version of the guest agent implementation (reported in the guest's hello)."""

PROTOCOL_VERSION = 2
"""Wire protocol version; host and guest must agree exactly.

2: exec ``tty`` and RESIZE; CHANGES and ARTIFACTS with their FILE_ENTRY /
FILE_DATA / FILES_DONE reply stream."""

MAX_PAYLOAD = 1 << 20
"""Largest payload a frame may carry (1 MiB)."""

MAX_DATA_CHUNK = 64 * 1024
"""Largest data chunk a sender puts in one frame (keeps latency and memory low)."""

_HEADER = struct.Struct(">IB")
HEADER_SIZE = _HEADER.size

# Stable error codes carried by ERROR frames (the wire codes, not host exception codes).
ERR_PROTOCOL = "protocol_error"
ERR_VERSION = "version_mismatch"
ERR_BUSY = "busy"
ERR_WORKSPACE = "workspace_failed"
ERR_CONFIGURE = "configure_failed"
ERR_INTERNAL = "internal_error"
ERR_IMAGE = "image_failed"
"""The user image's command root could not be built at boot; nothing runs."""
ERR_CHANGES = "changes_failed"


class FrameType(enum.IntEnum):
    """The type byte of a frame."""

    HELLO = 0x01
    CONFIGURE = 0x02
    CONFIGURED = 0x03
    WORKSPACE_BEGIN = 0x10
    WORKSPACE_CHUNK = 0x11
    WORKSPACE_END = 0x12
    WORKSPACE_DONE = 0x13
    WORKSPACE_ABORT = 0x14
    EXEC = 0x20
    STDIN = 0x21
    STDIN_EOF = 0x22
    STDOUT = 0x23
    STDERR = 0x24
    SIGNAL = 0x25
    EXIT = 0x26
    RESIZE = 0x27
    ERROR = 0x30
    CHANGES = 0x50
    ARTIFACTS = 0x51
    FILE_ENTRY = 0x52
    FILE_DATA = 0x53
    FILES_DONE = 0x54
    BASELINE = 0x55
    SHUTDOWN = 0x40
    GOODBYE = 0x41


JSON_TYPES = frozenset(
    {
        FrameType.HELLO,
        FrameType.CONFIGURE,
        FrameType.CONFIGURED,
        FrameType.WORKSPACE_BEGIN,
        FrameType.WORKSPACE_DONE,
        FrameType.EXEC,
        FrameType.SIGNAL,
        FrameType.RESIZE,
        FrameType.EXIT,
        FrameType.ERROR,
        FrameType.CHANGES,
        FrameType.ARTIFACTS,
        FrameType.FILE_ENTRY,
        FrameType.FILES_DONE,
    }
)
DATA_TYPES = frozenset(
    {
        FrameType.WORKSPACE_CHUNK,
        FrameType.STDIN,
        FrameType.STDOUT,
        FrameType.STDERR,
        FrameType.FILE_DATA,
    }
)
EMPTY_TYPES = frozenset(
    {
        FrameType.WORKSPACE_END,
        FrameType.WORKSPACE_ABORT,
        FrameType.STDIN_EOF,
        FrameType.SHUTDOWN,
        FrameType.GOODBYE,
        FrameType.BASELINE,
    }
)
_KNOWN = {int(t) for t in FrameType}


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its type and raw payload."""

    type: FrameType
    payload: bytes = b""


def encode_frame(ftype: FrameType, payload: bytes = b"") -> bytes:
    """Encode one frame; raises :class:`AgentProtocolError` if it would be invalid."""
    if len(payload) > MAX_PAYLOAD:
        raise AgentProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if ftype in EMPTY_TYPES and payload:
        raise AgentProtocolError(f"{ftype.name} frames carry no payload")
    return _HEADER.pack(len(payload), int(ftype)) + payload


class FrameDecoder:
    """Incremental decoder: :meth:`push` bytes as they arrive, :meth:`pop` whole frames.

    Holds at most one partial frame (header + up to :data:`MAX_PAYLOAD` bytes)
    plus the bytes of the last push. A header is validated as soon as it is
    complete, so an oversized length or unknown type fails before its payload
    is buffered. Errors surface in stream order: every frame before a bad one
    is popped first, then :meth:`pop` raises :class:`AgentProtocolError`. After
    that the decoder is unusable (the stream position is lost) and raises again.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max = max_payload
        self._failed: AgentProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes buffered that have not been popped as frames."""
        return len(self._buf) - self._pos

    def push(self, data: bytes) -> None:
        """Add received bytes."""
        if self._failed is not None:
            raise self._failed
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > MAX_PAYLOAD:
            del self._buf[: self._pos]  # compact now and then, not per frame
            self._pos = 0
        self._buf += data

    def pop(self) -> Frame | None:
        """The next whole frame, or None until more bytes arrive; raises on a bad frame."""
        if self._failed is not None:
            raise self._failed
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        length, tbyte = _HEADER.unpack_from(buf, pos)
        try:
            ftype = self._check_header(length, tbyte)
        except AgentProtocolError as exc:
            self._failed = exc
            self._buf = bytearray()
            self._pos = 0
            raise
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            return None
        self._pos = end
        return Frame(ftype, bytes(buf[pos + HEADER_SIZE : end]))

    def feed(self, data: bytes) -> list[Frame]:
        """:meth:`push` ``data`` and :meth:`pop` every frame it completes.

        If a bad frame follows good ones, the good ones are lost with the
        raise; code that must answer them first uses push/pop.
        """
        self.push(data)
        frames: list[Frame] = []
        while (frame := self.pop()) is not None:
            frames.append(frame)
        return frames

    def _check_header(self, length: int, tbyte: int) -> FrameType:
        if tbyte not in _KNOWN:
            raise AgentProtocolError(f"unknown frame type 0x{tbyte:02x}")
        ftype = FrameType(tbyte)
        if length > self._max:
            raise AgentProtocolError(f"frame of {length} bytes exceeds the {self._max} limit")
        if ftype in EMPTY_TYPES and length:
            raise AgentProtocolError(f"{ftype.name} frame carries a payload")
        return ftype
