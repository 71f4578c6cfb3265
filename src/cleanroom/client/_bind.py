"""Client methods made from the calls of :mod:`._calls`, once for both clients.

Each public method is a call builder (its signature and docstring are the
method's) bound to the client's transport: ``_call`` for a plain answer,
``_stream`` for a run's events, ``_terminal`` for an interactive run. The
clients differ only in that transport (blocking or awaitable), so neither
repeats the API.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from cleanroom.client._calls import Call
from cleanroom.client._terminal import TtyCall
from cleanroom.models import RunEvent, RunResult

if TYPE_CHECKING:  # the sessions import websockets: only on use
    from cleanroom.client._tty import TerminalSession
    from cleanroom.client._tty_async import AsyncTerminalSession

__all__ = [
    "EXEC_STREAM_DOC",
    "RUN_STREAM_DOC",
    "awaitable",
    "awaitable_stream",
    "awaitable_terminal",
    "blocking",
    "blocking_stream",
    "blocking_terminal",
]

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

RUN_STREAM_DOC = """\
Run ``command`` and yield ``RunStarted``, ``RunOutput``…, ``RunExit`` as they happen.

A failed run raises its error (with ``details['run_id']`` once known).
Closing the iterator early disconnects, which cancels the run.
"""
EXEC_STREAM_DOC = "Like :meth:`exec`, streaming events like :meth:`run_stream`."


def _as_method(method: F, build: Callable[..., Any], name: str, doc: str | None) -> F:
    """``method`` named ``name``, documented and signed as ``build`` (plus ``self``)."""
    method.__name__ = name
    method.__qualname__ = name
    method.__doc__ = build.__doc__ if doc is None else doc
    signature = inspect.signature(build)
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_parameter, *signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    return method


def _name(build: Callable[..., Any]) -> str:
    return build.__name__.removesuffix("_call").rstrip("_")


def blocking(build: Callable[P, Call[T]]) -> Callable[Concatenate[Any, P], T]:
    """A blocking client method: ``self._call(build(...))``."""

    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        result: T = self._call(build(*args, **kwargs))
        return result

    return _as_method(method, build, _name(build), None)


def awaitable(
    build: Callable[P, Call[T]],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]:
    """An asyncio client method: ``await self._call(build(...))``."""

    async def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        result: T = await self._call(build(*args, **kwargs))
        return result

    return _as_method(method, build, _name(build), None)


def blocking_stream(
    build: Callable[P, Call[RunResult]], name: str, doc: str
) -> Callable[Concatenate[Any, P], Iterator[RunEvent]]:
    """A blocking streaming method: ``self._stream(build(...))``."""

    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[RunEvent]:
        events: Iterator[RunEvent] = self._stream(build(*args, **kwargs))
        return events

    return _as_method(method, build, name, doc)


def awaitable_stream(
    build: Callable[P, Call[RunResult]], name: str, doc: str
) -> Callable[Concatenate[Any, P], AsyncIterator[RunEvent]]:
    """An asyncio streaming method (an async iterator): ``self._stream(build(...))``."""

    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[RunEvent]:
        events: AsyncIterator[RunEvent] = self._stream(build(*args, **kwargs))
        return events

    return _as_method(method, build, name, doc)


def blocking_terminal(
    build: Callable[P, TtyCall],
) -> Callable[Concatenate[Any, P], TerminalSession]:
    """A blocking interactive method: ``self._terminal(build(...))``."""

    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> TerminalSession:
        session: TerminalSession = self._terminal(build(*args, **kwargs))
        return session

    return _as_method(method, build, build.__name__, None)


def awaitable_terminal(
    build: Callable[P, TtyCall],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, AsyncTerminalSession]]:
    """An asyncio interactive method: ``await self._terminal(build(...))``."""

    async def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> AsyncTerminalSession:
        session: AsyncTerminalSession = await self._terminal(build(*args, **kwargs))
        return session

    return _as_method(method, build, build.__name__, None)
