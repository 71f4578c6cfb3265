"""The uploaded-workspace store: ids used once, expiry, removal at close."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cleanroom.config import LimitsConfig
from cleanroom.errors import CapacityExhausted, UploadTimeout, WorkspaceInvalid
from cleanroom.service.uploads import MAX_PENDING_UPLOADS, Uploads


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("cleanroom.yaml")
        info.size = 11
        tar.addfile(info, io.BytesIO(b"version: 1\n"))
    return buf.getvalue()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 100):
        await asyncio.sleep(0)
        yield data[start : start + 100]


def test_claim_once_then_release(tmp_path: Path) -> None:
    async def main() -> None:
        store = Uploads(tmp_path / "uploads", LimitsConfig())
        upload = await store.receive(_chunks(_archive()))
        assert (upload.path / "cleanroom.yaml").read_text() == "version: 1\n"
        path = store.claim(upload.workspace_id)
        with pytest.raises(WorkspaceInvalid):
            store.claim(upload.workspace_id)
        gate = asyncio.Event()
        store.release(path, [gate.wait()])
        await asyncio.sleep(0.05)
        assert path.exists()  # kept until what it waits for is done
        gate.set()
        await store.close()
        assert not path.exists()
        assert not (tmp_path / "uploads").exists()

    asyncio.run(main())


def test_unclaimed_uploads_expire(tmp_path: Path) -> None:
    async def main() -> None:
        store = Uploads(tmp_path / "uploads", LimitsConfig(), ttl=0.05)
        upload = await store.receive(_chunks(_archive()))
        await asyncio.sleep(0.3)
        with pytest.raises(WorkspaceInvalid, match="expired"):
            store.claim(upload.workspace_id)
        assert not upload.path.exists()
        await store.close()

    asyncio.run(main())


def test_a_refused_archive_leaves_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        store = Uploads(tmp_path / "uploads", LimitsConfig())
        with pytest.raises(WorkspaceInvalid):
            await store.receive(_chunks(b"\x01" * 2048))
        await store.close()

    asyncio.run(main())
    assert not (tmp_path / "uploads").exists()


def test_pending_uploads_are_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        store = Uploads(tmp_path / "uploads", LimitsConfig())
        for _ in range(MAX_PENDING_UPLOADS):
            await store.receive(_chunks(_archive()))
        with pytest.raises(CapacityExhausted):
            await store.receive(_chunks(_archive()))
        await store.close()

    asyncio.run(main())


def test_slow_uploads_give_their_slots_back(tmp_path: Path) -> None:
    limits = LimitsConfig(upload_min_bytes=1024, upload_window_seconds=0.2)

    async def trickle() -> AsyncIterator[bytes]:
        data = _archive()
        yield data[:600]  # a whole header and part of the file
        for byte in data[600:]:
            await asyncio.sleep(0.05)
            yield bytes([byte])

    async def main() -> None:
        store = Uploads(tmp_path / "uploads", limits)
        slow = [store.receive(trickle()) for _ in range(MAX_PENDING_UPLOADS)]
        outcomes = await asyncio.gather(*slow, return_exceptions=True)
        assert all(isinstance(outcome, UploadTimeout) for outcome in outcomes)
        for _ in range(20):
            if not any((tmp_path / "uploads").iterdir()):
                break
            await asyncio.sleep(0.05)
        assert list((tmp_path / "uploads").iterdir()) == []  # the partial trees are gone
        for _ in range(MAX_PENDING_UPLOADS):  # and every slot is free again
            await store.receive(_chunks(_archive()))
        await store.close()

    asyncio.run(main())


def test_the_unclaimed_lifetime_comes_from_the_limits(tmp_path: Path) -> None:
    async def main() -> None:
        store = Uploads(tmp_path / "uploads", LimitsConfig(upload_ttl_seconds=0.05))
        upload = await store.receive(_chunks(_archive()))
        assert upload.expires_in_seconds == 0.05
        await asyncio.sleep(0.3)
        assert not upload.path.exists()
        with pytest.raises(WorkspaceInvalid, match="expired"):
            store.claim(upload.workspace_id)
        await store.close()

    asyncio.run(main())
