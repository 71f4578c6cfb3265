"""``cleanroom.testing.ServerThread`` releases its listener when the server cannot be built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import cleanroom.testing.server as server_module
from cleanroom.server import ListenAddress
from cleanroom.service import Service
from cleanroom.testing import ServerThread


def test_a_server_that_cannot_be_built_leaves_no_listener(
    service: Service, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("app build failed")

    sock = root / "run" / "s.sock"
    address = ListenAddress(scheme="unix", path=sock)
    with monkeypatch.context() as mp:
        mp.setattr(server_module, "CleanroomServer", broken)
        with pytest.raises(RuntimeError, match="app build failed"), ServerThread(service, address):
            pass
    assert not sock.exists()
    with ServerThread(service, address) as running:  # the address is free again
        assert running.url == f"unix://{sock}"
