"""The NDJSON run stream: one JSON object per line, encoded by the server, decoded by clients.

Line types, in order: ``started`` (run_id, cleanroom_id, run_dir), any number of
``stdout``/``stderr`` (``data`` is text, or base64 with ``"encoding": "base64"``
when the bytes are not valid UTF-8), then exactly one ``exit`` (every run result
field) or ``error`` (``{"error": {code, message, details}}``). Decoders skip
line types they do not know, so the server may add new ones. Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cleanroom.errors import CleanroomError, error_class_for_code
from cleanroom.models import RunEvent, RunExit, RunOutput, RunResult, RunStarted, from_dict, to_dict

__all__ = [
    "NDJSON",
    "EventDecoder",
    "Utf8Chunker",
    "error_line",
    "exit_line",
    "output_line",
    "started_line",
]

NDJSON = "application/x-ndjson"
_MAX_UTF8_TAIL = 3

Encoded = tuple[str, str | None]
"""Output data as text, and its encoding (``"base64"``, or None for UTF-8 text)."""


class Utf8Chunker:
    """Turns one output stream's byte chunks into ``(data, encoding)`` pairs.

    A UTF-8 sequence split across chunk boundaries is held back (at most 3
    bytes) until the next chunk, so it does not force base64 on either half.
    Chunks that are not valid UTF-8 become base64 (``encoding="base64"``).
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> Encoded | None:
        """Encode ``data`` (plus any held-back tail); ``None`` when nothing is ready."""
        buf = self._pending + data
        cut = len(buf) - _incomplete_tail(buf)
        head, self._pending = buf[:cut], buf[cut:]
        return _encode(head) if head else None

    def flush(self) -> Encoded | None:
        """Whatever is still held back (an incomplete sequence: always base64)."""
        rest, self._pending = self._pending, b""
        return _encode(rest) if rest else None


def _incomplete_tail(buf: bytes) -> int:
    """Length of a trailing UTF-8 sequence that a following chunk could complete."""
    for back in range(1, min(_MAX_UTF8_TAIL, len(buf)) + 1):
        byte = buf[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        if byte >= 0xF0:
            need = 4
        elif byte >= 0xE0:
            need = 3
        elif byte >= 0xC0:
            need = 2
        else:
            return 0
        return back if need > back else 0
    return 0


def _encode(data: bytes) -> Encoded:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


def started_line(event: RunStarted) -> bytes:
    """The ``started`` line."""
    return _line(
        {
            "type": "started",
            "run_id": event.run_id,
            "cleanroom_id": event.cleanroom_id,
            "run_dir": str(event.run_dir),
        }
    )


def output_line(stream: str, encoded: Encoded) -> bytes:
    """A ``stdout``/``stderr`` line for data from a :class:`Utf8Chunker`."""
    data, encoding = encoded
    obj: dict[str, Any] = {"type": stream, "data": data}
    if encoding is not None:
        obj["encoding"] = encoding
    return _line(obj)


def exit_line(result: RunResult) -> bytes:
    """The ``exit`` line: every field of the result."""
    return _line({"type": "exit", **to_dict(result)})


def error_line(exc: CleanroomError) -> bytes:
    """The ``error`` line."""
    return _line({"type": "error", **exc.to_dict()})


class EventDecoder:
    """Decodes one run stream line by line into run events.

    ``run_id`` is known once ``started`` arrived; ``finished`` once ``exit``
    or ``error`` did. Malformed lines raise ``CleanroomError``.
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.finished = False

    def event(self, line: str | bytes) -> RunEvent | None:
        """The event on ``line`` (``None`` for blank lines and unknown types);
        an ``error`` line is raised as its error class (with ``details['run_id']``)."""
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
            kind = obj.pop("type")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CleanroomError(f"malformed stream line from server: {line[:200]!r}") from exc
        try:
            return self._decode(kind, obj)
        except CleanroomError as exc:
            if kind == "error" and not isinstance(exc, _Malformed):
                raise
            raise CleanroomError(f"malformed {kind!r} event from server") from exc
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise CleanroomError(f"malformed {kind!r} event from server") from exc

    def _decode(self, kind: str, obj: dict[str, Any]) -> RunEvent | None:
        if kind == "started":
            event = from_dict(RunStarted, obj)
            self.run_id = event.run_id
            return event
        if kind in ("stdout", "stderr"):
            return RunOutput("stdout" if kind == "stdout" else "stderr", _output_data(obj))
        if kind == "exit":
            self.finished = True
            return RunExit(from_dict(RunResult, obj))
        if kind == "error":
            self.finished = True
            raise self._error(obj)
        return None  # unknown event types are skipped: the server may add new ones

    def _error(self, obj: dict[str, Any]) -> CleanroomError:
        try:
            error = obj["error"]
            code, message = str(error["code"]), str(error["message"])
            details = dict(error.get("details") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _Malformed("malformed error event") from exc
        if self.run_id is not None:
            details.setdefault("run_id", self.run_id)
        return error_class_for_code(code)(message, details=details)


def _output_data(obj: dict[str, Any]) -> bytes:
    """The bytes of an output line; ValueError or TypeError when it is not one."""
    encoding = obj.get("encoding")
    if set(obj) - {"data", "encoding"} or encoding not in (None, "base64"):
        raise ValueError("unexpected output line")
    raw = obj["data"]
    if not isinstance(raw, str):
        raise TypeError("output data is not a string")
    return base64.b64decode(raw, validate=True) if encoding == "base64" else raw.encode()


class _Malformed(CleanroomError):
    """An ``error`` line that is not an error body."""
