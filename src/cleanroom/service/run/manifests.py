"""The manifest of a staged workspace copy, taken on a thread while the guest boots."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from cleanroom.changes import HostManifest, take_manifest
from cleanroom.service.run.resources import RunResources

__all__ = ["ManifestJob"]


@dataclass(frozen=True)
class ManifestJob:
    """A running :func:`~cleanroom.changes.take_manifest` of a staged copy."""

    future: asyncio.Future[HostManifest]

    @classmethod
    def start(cls, staged: Path, res: RunResources) -> ManifestJob:
        """Start hashing ``staged``. ``res`` waits for the thread before it removes
        anything registered earlier (the staged copy), on every exit path."""
        future = asyncio.ensure_future(asyncio.to_thread(take_manifest, staged))

        async def settle() -> None:
            await asyncio.wait({future})
            if not future.cancelled():
                future.exception()  # retrieved: a failed job is reported by result()

        res.push(settle)
        return cls(future)

    async def result(self) -> HostManifest:
        """The manifest; raises ``InvalidRequest`` if the copy could not be read."""
        return await asyncio.shield(self.future)
