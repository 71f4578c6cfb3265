"""The uploaded-workspace store: ids used once, expiry, removal at close."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cleanroom.config import LimitsConfig
from cleanroom.errors import CapacityExhausted, WorkspaceInvalid
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
