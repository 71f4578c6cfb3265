"""One server per state directory: a second service on the same state directory is refused
before it can repair (and so destroy) the first one's live runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanroom import paths
from cleanroom.errors import ServerUnavailable
from cleanroom.service.statelock import LOCK_NAME, StateLock
from cleanroom.testing import agent_service


async def test_second_service_on_same_state_dir_is_refused() -> None:
    first = agent_service()
    await first.start()
    try:
        second = agent_service()
        with pytest.raises(ServerUnavailable) as info:
            await second.start()
        assert info.value.code == "server_unavailable"
        assert info.value.details["reason"] == "state_dir_in_use"
        await second.close()  # closing a refused service must not drop the first one's lock
        with pytest.raises(ServerUnavailable):
            await agent_service().start()
    finally:
        await first.close()
    third = agent_service()
    await third.start()  # released on close
    await third.close()


def test_lock_is_not_taken_through_a_symlink(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("")
    (state / LOCK_NAME).symlink_to(target)
    with pytest.raises(ServerUnavailable) as info:
        StateLock(state).acquire()
    assert info.value.details["reason"] == "state_dir_unusable"


def test_lock_file_is_private_and_release_is_idempotent() -> None:
    lock = StateLock(paths.state_dir())
    lock.acquire()
    lock.acquire()
    assert lock.held
    assert (paths.state_dir() / LOCK_NAME).stat().st_mode & 0o777 == 0o600
    lock.release()
    lock.release()
    assert not lock.held
    other = StateLock(paths.state_dir())
    other.acquire()
    other.release()
    assert (paths.state_dir() / LOCK_NAME).exists()
