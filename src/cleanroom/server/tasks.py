"""Ending the helper tasks a request handler started (its work, its disconnect watch)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel each of ``tasks`` that is still running and wait until it has ended;
    what each raised or returned (its cancellation too) is dropped, so none is
    left running or holding an unretrieved exception when the handler returns."""
    for task in tasks:
        task.cancel()  # a no-op on one already done
        with contextlib.suppress(BaseException):
            await task
