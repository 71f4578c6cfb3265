"""Time rules for an upload's body, so slow clients cannot hold upload slots for ever.

Two rules, both ``upload_timeout`` (408) when broken:

- the whole upload must arrive within :attr:`UploadPace.timeout` seconds of
  its start;
- every :attr:`UploadPace.min_bytes` of it must arrive within
  :attr:`UploadPace.window` seconds of *waiting for the client*: a client
  trickling a byte now and then is cut off after one window. Only the time
  spent waiting for the next chunk counts, so a server slow to write what it
  already has never makes a client look slow.

The end of the stream may come after fewer bytes than the rule asks for: only
a wait that runs out breaks it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from cleanroom.config_limits import LimitsConfig
from cleanroom.errors import UploadTimeout

__all__ = ["UploadPace", "paced"]


@dataclass(frozen=True)
class UploadPace:
    """How fast an upload must arrive (see the module doc)."""

    timeout: float
    min_bytes: int
    window: float

    @classmethod
    def of(cls, limits: LimitsConfig) -> UploadPace:
        """The runtime config's ``limits.upload_*`` rules."""
        return cls(
            limits.upload_timeout_seconds, limits.upload_min_bytes, limits.upload_window_seconds
        )


def paced(
    chunks: AsyncIterator[bytes],
    pace: UploadPace,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[bytes]:
    """``chunks`` as they come, or ``UploadTimeout`` as soon as a rule is broken.

    The whole-upload deadline counts from this call, not from the first read.
    The pending read of ``chunks`` is cancelled when a rule is broken.
    """
    return _paced(chunks, pace, clock, clock() + pace.timeout)


async def _paced(
    chunks: AsyncIterator[bytes], pace: UploadPace, clock: Callable[[], float], deadline: float
) -> AsyncIterator[bytes]:
    waited = 0.0  # waiting for the client since the window opened
    received = 0  # bytes since the window opened
    while True:
        start = clock()
        whole = deadline - start <= pace.window - waited
        limit = asyncio.timeout(max(min(deadline - start, pace.window - waited), 0.0))
        try:
            async with limit:
                chunk = await anext(chunks, None)
        except TimeoutError:
            if not limit.expired():
                raise  # the stream's own, not a broken rule
            raise _broken(pace, whole=whole, received=received) from None
        if chunk is None:
            return
        waited += clock() - start
        received += len(chunk)
        if received >= pace.min_bytes:
            waited, received = 0.0, 0
        yield chunk


def _broken(pace: UploadPace, *, whole: bool, received: int) -> UploadTimeout:
    if whole:
        return UploadTimeout(
            f"the upload did not finish within limits.upload_timeout_seconds ({pace.timeout:g} s)",
            details={"limit": "upload_timeout_seconds", "seconds": pace.timeout},
        )
    return UploadTimeout(
        f"the upload sent {received} bytes in limits.upload_window_seconds "
        f"({pace.window:g} s); at least limits.upload_min_bytes ({pace.min_bytes}) must arrive",
        details={
            "limit": "upload_window_seconds",
            "seconds": pace.window,
            "bytes": received,
            "min_bytes": pace.min_bytes,
        },
    )
