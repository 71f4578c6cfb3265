"""Configure the guest and give it the workspace.

A guest whose disk was made on the host already holds the workspace; any
other gets it streamed through the agent as a tar archive, which is prepared
on a thread while the guest handles configure.

A writable workspace also yields the host's manifest of what the guest got
(the base its changes are compared with): read from the very archive that is
streamed, on a thread while the transfer runs, or taken from the staged copy
a host-made disk was built from (see ``obtain``); the agent of a disk-seeded
guest then records its own baseline.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from cleanroom.changes import HostManifest, manifest_from_archive
from cleanroom.service.record import RunRecorder, WorkspaceFacts
from cleanroom.service.run.obtain import Obtained
from cleanroom.service.run.plan import RunPlan
from cleanroom.service.run.resources import RunResources, remove_path
from cleanroom.service.workspace import ArchiveStats, PreparedArchive, prepare_archive

__all__ = ["EMPTY_TAR", "configure_and_transfer"]

EMPTY_TAR = bytes(1024)
"""An empty tar archive (two zero blocks)."""


async def configure_and_transfer(
    plan: RunPlan, obtained: Obtained, scan: ArchiveStats, rec: RunRecorder, res: RunResources
) -> HostManifest | None:
    """Configure ``obtained``'s guest (entropy, network), then put the workspace in place;
    the manifest of what it got (None for a read-only workspace: nothing comes back).

    Raises the agent's errors (``AgentError``) and ``InvalidRequest`` for an
    unreadable workspace; an archive file left behind is removed by ``res``.
    """
    client = obtained.client
    archiving: asyncio.Future[PreparedArchive] | None = None
    if not obtained.seeded:
        archiving = asyncio.ensure_future(
            prepare_archive(
                plan.cwd, scan.bytes, plan.run_dir, manifest=not plan.read_only_workspace
            )
        )
        res.push(_archive_remover(archiving))
    with rec.timed("configure"):
        await client.configure(entropy_seed=os.urandom(64), network=obtained.network)
    extracted = refused = archive_bytes = 0
    manifest = None if plan.read_only_workspace else obtained.manifest
    with rec.timed("workspace_transfer"):
        if archiving is None:
            # Already on the guest's disk. Only a read-only workspace needs the
            # agent: an empty stream makes it apply the read-only bind mount.
            if plan.read_only_workspace:
                ws = await client.send_workspace([EMPTY_TAR], read_only=True)
                extracted, refused = ws.files, ws.skipped
        else:
            prepared = await archiving
            rec.timing("workspace_archive_ms", prepared.archive_ms)
            archive_bytes = prepared.stats.archive_bytes
            reading = None
            if not plan.read_only_workspace and prepared.path is not None:
                reading = _read_manifest(prepared.path)  # a file, read while it streams
            try:
                ws = await client.send_workspace(
                    prepared.chunks, read_only=plan.read_only_workspace
                )
            finally:
                if reading is not None:
                    # Its thread reads the archive file: let it finish before removal.
                    await asyncio.wait({reading})
                    if not reading.cancelled():
                        reading.exception()  # retrieved; a failure is raised by result()
            manifest = reading.result() if reading is not None else prepared.manifest
            extracted, refused = ws.files, ws.skipped
            if prepared.path is not None:
                remove_path(prepared.path)
    if archiving is None and manifest is not None:
        with rec.timed("workspace_baseline"):
            await client.baseline()
    rec.set_workspace(
        WorkspaceFacts(
            method="disk" if obtained.seeded else "stream",
            files=scan.files,
            bytes=scan.bytes,
            archive_bytes=archive_bytes,
            skipped=tuple(scan.skipped),
            extracted_files=extracted,
            refused=refused,
            read_only=plan.read_only_workspace,
        )
    )
    return manifest


def _read_manifest(archive: Path) -> asyncio.Future[HostManifest]:
    """The manifest of the archive file ``archive``, read on a thread."""
    return asyncio.ensure_future(asyncio.to_thread(manifest_from_archive, archive))


def _archive_remover(archiving: asyncio.Future[PreparedArchive]) -> Callable[[], Awaitable[None]]:
    async def remove() -> None:
        # Let the archiving thread finish first, so its file is not written after removal.
        await asyncio.wait({archiving})
        if archiving.cancelled() or archiving.exception() is not None:
            return
        path = archiving.result().path
        if path is not None:
            await asyncio.to_thread(remove_path, path)

    return remove
