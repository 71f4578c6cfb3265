"""Finished runs, served back: their records, patches and artifacts, and their
changes applied to the host directory they came from."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cleanroom import paths
from cleanroom.errors import InvalidRequest, RunNotFound
from cleanroom.models import Applied
from cleanroom.service.changestore import load_changes
from cleanroom.service.finalize import Finalizers
from cleanroom.service.record import read_record
from cleanroom.service.runfiles import apply_run, artifact_path, run_patch
from cleanroom.service.uploads import Uploads

__all__ = ["FinishedRuns"]


class FinishedRuns:
    """The service's finished runs (``runs``: run id -> run directory, shared with
    the service; a run not in it is looked for in the state directory)."""

    def __init__(self, finalizers: Finalizers, runs: dict[str, Path], uploads: Uploads) -> None:
        self._finalizers = finalizers
        self._runs = runs
        self._uploads = uploads

    async def locate(self, run_id: str) -> tuple[Path, dict[str, Any]]:
        """The finished run's directory and record (after its background release).
        Raises ``RunNotFound``."""
        if not run_id.startswith("run-") or "/" in run_id or len(run_id) > 64:
            raise RunNotFound(f"no run {run_id!r}", details={"run_id": run_id})
        await self._finalizers.wait(run_id)
        run_dir = self._runs.get(run_id, paths.state_dir() / "runs" / run_id)
        try:
            return run_dir, read_record(run_dir)
        except (OSError, ValueError, TypeError) as exc:
            raise RunNotFound(f"no record for run {run_id!r}", details={"run_id": run_id}) from exc

    async def diff(self, run_id: str) -> bytes:
        """See ``ServiceAPI.run_diff``."""
        run_dir, record = await self.locate(run_id)
        return await asyncio.to_thread(run_patch, run_dir, record)

    async def artifact(self, run_id: str, path: str) -> Path:
        """See ``ServiceAPI.run_artifact``."""
        run_dir, record = await self.locate(run_id)
        return artifact_path(run_dir, record, path)

    async def apply(self, run_id: str) -> Applied:
        """See ``ServiceAPI.apply_changes``; ``InvalidRequest`` for a run of an uploaded
        workspace (its tree is the server's copy, not the client's directory)."""
        run_dir, _ = await self.locate(run_id)
        stored = await asyncio.to_thread(load_changes, run_dir)
        if stored is not None and self._uploads.holds(stored.source):
            raise InvalidRequest(
                "the run's workspace was uploaded: apply its diff where it came from "
                "(GET /v1/runs/{run_id}/diff)",
                details={"run_id": run_id},
            )
        return await asyncio.to_thread(apply_run, run_dir)
