"""How both terminal sessions end a read that never sees the run's exit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cleanroom.client._endpoint import Endpoint
from cleanroom.client._tty import TerminalSession
from cleanroom.client._tty_async import AsyncTerminalSession
from cleanroom.errors import ServerUnavailable

ENDPOINT = Endpoint("tcp://127.0.0.1:1", "http://127.0.0.1:1")


def _messages(lose: bool) -> Iterator[bytes]:
    yield b"some output"
    if lose:
        raise OSError("connection reset")


async def _async_messages(lose: bool) -> AsyncIterator[bytes]:
    for message in _messages(lose):
        yield message


@pytest.mark.parametrize(("lose", "cause"), [(False, "without a result"), (True, "reset")])
def test_a_blocking_read_without_the_exit_is_server_unavailable(lose: bool, cause: str) -> None:
    ws: Any = _messages(lose)
    events = TerminalSession(ws, ENDPOINT).events()
    assert next(events).data == b"some output"  # type: ignore[union-attr]
    with pytest.raises(ServerUnavailable, match="was lost") as caught:
        next(events)
    assert cause in caught.value.details["cause"]


@pytest.mark.parametrize(("lose", "cause"), [(False, "without a result"), (True, "reset")])
async def test_an_awaitable_read_without_the_exit_is_server_unavailable(
    lose: bool, cause: str
) -> None:
    ws: Any = _async_messages(lose)
    events = AsyncTerminalSession(ws, ENDPOINT).events()
    assert (await anext(events)).data == b"some output"  # type: ignore[union-attr]
    with pytest.raises(ServerUnavailable, match="was lost") as caught:
        await anext(events)
    assert cause in caught.value.details["cause"]
