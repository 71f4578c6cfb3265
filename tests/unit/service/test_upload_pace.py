"""The upload time rules: a whole-upload deadline and a minimum pace per window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest

from cleanroom.config import LimitsConfig
from cleanroom.errors import UploadTimeout
from cleanroom.service.upload_pace import UploadPace, paced


async def _trickle(pieces: int, size: int, gap: float) -> AsyncIterator[bytes]:
    for _ in range(pieces):
        await asyncio.sleep(gap)
        yield b"x" * size


async def _drain(chunks: AsyncIterator[bytes]) -> int:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
    return total


def _run(chunks: AsyncIterator[bytes], pace: UploadPace) -> int:
    return asyncio.run(_drain(paced(chunks, pace)))


def test_the_pace_comes_from_the_limits() -> None:
    limits = LimitsConfig(upload_timeout_seconds=9, upload_min_bytes=7, upload_window_seconds=3)
    assert UploadPace.of(limits) == UploadPace(timeout=9, min_bytes=7, window=3)


def test_a_fast_enough_stream_passes_whole() -> None:
    assert _run(_trickle(10, 100, 0.01), UploadPace(timeout=5, min_bytes=100, window=0.5)) == 1000


def test_a_short_stream_ends_below_the_minimum() -> None:
    # The end of the stream is not a slow client: fewer than min_bytes in all is fine.
    assert _run(_trickle(2, 10, 0.01), UploadPace(timeout=5, min_bytes=1000, window=0.5)) == 20


def test_a_trickle_is_cut_off_after_one_window() -> None:
    pace = UploadPace(timeout=30, min_bytes=1000, window=0.3)
    start = asyncio.run(_timed(_drain(paced(_trickle(1000, 1, 0.02), pace))))
    assert isinstance(start.error, UploadTimeout)
    assert start.error.details["limit"] == "upload_window_seconds"
    assert 0 < start.error.details["bytes"] < 1000
    assert 0.25 < start.seconds < 2


def test_the_window_restarts_each_time_enough_arrived() -> None:
    # 100 bytes every 0.1 s: each window of 0.3 s sees its 200 bytes, for 1.5 s in all.
    pace = UploadPace(timeout=30, min_bytes=200, window=0.3)
    assert _run(_trickle(15, 100, 0.1), pace) == 1500


def test_the_whole_upload_has_a_deadline() -> None:
    pace = UploadPace(timeout=0.5, min_bytes=10, window=0.2)
    timed = asyncio.run(_timed(_drain(paced(_trickle(1000, 100, 0.02), pace))))
    assert isinstance(timed.error, UploadTimeout)
    assert timed.error.details["limit"] == "upload_timeout_seconds"
    assert 0.45 < timed.seconds < 2


def test_a_silent_client_is_cut_off() -> None:
    async def silent() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""

    with pytest.raises(UploadTimeout):
        _run(silent(), UploadPace(timeout=30, min_bytes=1, window=0.1))


def test_the_streams_own_timeout_is_not_a_broken_rule() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"x"
        raise TimeoutError("the stream's own")

    with pytest.raises(TimeoutError, match="own"):
        _run(failing(), UploadPace(timeout=30, min_bytes=1, window=5))


def test_only_waiting_for_the_client_counts() -> None:
    # The consumer is slow (0.2 s per chunk, longer than the window) but every
    # chunk is there at once: the client is never waited for.
    async def main() -> int:
        total = 0
        async for chunk in paced(_trickle(5, 1, 0), UploadPace(30, 1000, 0.1)):
            total += len(chunk)
            await asyncio.sleep(0.2)
        return total

    assert asyncio.run(main()) == 5


class _Timed:
    def __init__(self, error: BaseException | None, seconds: float) -> None:
        self.error = error
        self.seconds = seconds


async def _timed(work: Awaitable[object]) -> _Timed:
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        await work
    except Exception as exc:
        return _Timed(exc, loop.time() - start)
    return _Timed(None, loop.time() - start)
