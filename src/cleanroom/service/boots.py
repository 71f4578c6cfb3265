"""How many guests may boot at once.

A boot under software emulation is several CPU-seconds of pure CPU work;
twenty at once on two cores slow each other down and hold every guest's memory
at the same time. Measured back to back with 20 concurrent runs on 2 cores
(bench/density.py): unlimited 152 s wall, 15 CPU-s per run, +3.9 GiB peak;
two per core 119 s, 11.6 CPU-s, +1.0 GiB; one per core 124 s, 11.3 CPU-s,
+0.6 GiB. A run's ``launch_seconds`` starts when its boot does, not while it
waits for its turn (recorded as ``boot_queue_ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

__all__ = ["BootGate", "default_boot_limit"]


def default_boot_limit() -> int:
    """Two boots per CPU core (at least one)."""
    return max(1, 2 * (os.cpu_count() or 1))


class BootGate:
    """An asyncio semaphore that also reports how long a boot waited for its turn."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._sem = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[float]:
        """Hold one boot slot; yields the milliseconds spent waiting for it."""
        started = time.monotonic()
        async with self._sem:
            yield (time.monotonic() - started) * 1000
