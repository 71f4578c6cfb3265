"""Capture a run's output: logs on disk up to a limit, a bounded copy in memory, live events."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Literal

from cleanroom.config_limits import LimitsConfig
from cleanroom.errors import OutputLimitExceeded
from cleanroom.service.types import EventSink, RunOutput

__all__ = ["CAPTURE_LIMIT", "DEFAULT_LOG_LIMIT", "OutputCapture"]

CAPTURE_LIMIT = 1 << 20
"""Bytes of each stream kept in memory for the API response; the logs hold more."""

DEFAULT_LOG_LIMIT = LimitsConfig().output_log_bytes
"""Bytes of each stream kept on disk by default (``limits.output_log_bytes``)."""

Stream = Literal["stdout", "stderr"]


class OutputCapture:
    """Writes ``stdout.log``/``stderr.log`` in ``run_dir`` and forwards chunks to ``sink``.

    Memory stays bounded by :data:`CAPTURE_LIMIT` per stream and disk by
    ``log_limit`` per stream, whatever the command writes: the chunk that
    crosses ``log_limit`` is written (and forwarded) up to it, then
    :meth:`write` raises ``OutputLimitExceeded`` (the run is then failed and
    its guest destroyed by the run's cleanup owner).
    """

    def __init__(
        self, run_dir: Path, sink: EventSink | None, log_limit: int = DEFAULT_LOG_LIMIT
    ) -> None:
        self._sink = sink
        self._log_limit = log_limit
        self._files: dict[Stream, BinaryIO] = {
            "stdout": (run_dir / "stdout.log").open("wb"),
            "stderr": (run_dir / "stderr.log").open("wb"),
        }
        self._kept: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._total: dict[Stream, int] = {"stdout": 0, "stderr": 0}

    async def write(self, stream: Stream, data: bytes) -> None:
        """Record one chunk (called by the agent client as output arrives).

        Raises ``OutputLimitExceeded`` once ``stream`` passes the log limit.
        """
        over = self._total[stream] + len(data) > self._log_limit
        if over:
            data = data[: max(0, self._log_limit - self._total[stream])]
        self._files[stream].write(data)
        self._total[stream] += len(data)
        kept = self._kept[stream]
        room = CAPTURE_LIMIT - len(kept)
        if room > 0:
            kept += data[:room]
        if self._sink is not None and data:
            await self._sink(RunOutput(stream, data))
        if over:
            raise OutputLimitExceeded(
                f"the command wrote more than {self._log_limit} bytes to {stream}; it was killed",
                details={"stream": stream, "limit": self._log_limit},
            )

    def text(self, stream: Stream) -> str:
        """The captured prefix of ``stream`` decoded as UTF-8 (invalid bytes replaced)."""
        return self._kept[stream].decode("utf-8", errors="replace")

    def truncated(self, stream: Stream) -> bool:
        """Whether ``stream`` produced more than :data:`CAPTURE_LIMIT` bytes."""
        return self._total[stream] > CAPTURE_LIMIT

    def close(self) -> None:
        """Flush and close the log files. Idempotent."""
        for fh in self._files.values():
            fh.close()
