"""Client-side resources released by ``close()``, and by leaving their ``with`` block."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["AsyncClosing", "Closing"]


class Closing:
    """Base of a resource whose ``with`` block ends by calling its :meth:`close`."""

    def close(self) -> None:
        """Release the resource (subclasses say what that means). Idempotent."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosing:
    """Base of a resource whose ``async with`` block ends by awaiting its :meth:`aclose`."""

    async def aclose(self) -> None:
        """Release the resource (subclasses say what that means). Idempotent."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
