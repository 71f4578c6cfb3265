"""The run record: ``<run_dir>/run-observability.json``, one schema for every backend.

A :class:`RunRecorder` is filled in while a run progresses (timings, outcome)
and written atomically at the end, also when the run fails, so every run
leaves a complete record.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cleanroom.service.ids import utc_now

__all__ = ["RECORD_NAME", "SCHEMA_VERSION", "TIMING_KEYS", "RunRecorder", "read_record"]

RECORD_NAME = "run-observability.json"
SCHEMA_VERSION = 1

TIMING_KEYS = (
    "policy_resolution_ms",
    "workspace_scan_ms",
    "boot_queue_ms",
    "rootfs_prepare_ms",
    "workspace_disk_ms",
    "vmm_start_ms",
    "workspace_archive_ms",
    "network_setup_ms",
    "vm_ready_ms",
    "agent_connect_wait_ms",
    "configure_ms",
    "workspace_transfer_ms",
    "command_ms",
    "network_cleanup_ms",
    "guest_teardown_ms",
    "total_ms",
)
"""Every timing a record carries (milliseconds; ``null`` when the run ended before that step)."""


class RunRecorder:
    """Accumulates one run's record. Not thread-safe; owned by the run's task."""

    def __init__(
        self,
        *,
        run_id: str,
        cleanroom_id: str,
        backend: str,
        policy_hash: str,
        command: list[str],
        run_dir: Path,
    ) -> None:
        self.run_dir = run_dir
        self._t0 = time.monotonic()
        self.data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "cleanroom_id": cleanroom_id,
            "backend": backend,
            "isolation": None,
            "policy_hash": policy_hash,
            "command": command,
            "status": "running",
            "exit_code": None,
            "signal": None,
            "error": None,
            "started_at": utc_now(),
            "ended_at": None,
            "cleanup": "pending",
            "cleanup_error": None,
            "pool": "miss",
            "rootfs_method": None,
            "guest": None,
            "workspace": None,
            "network": None,
            "artifacts": {
                "stdout": "stdout.log",
                "stderr": "stderr.log",
                "console": "console.log",
                "plan": None,
            },
        }
        for key in TIMING_KEYS:
            self.data[key] = None

    def timing(self, key: str, ms: float) -> None:
        """Record ``key`` (one of :data:`TIMING_KEYS`) in milliseconds, rounded to 0.1 ms."""
        if key not in TIMING_KEYS:
            raise KeyError(key)
        self.data[key] = round(ms, 1)

    def set(self, **fields: Any) -> None:
        """Set top-level fields (``isolation``, ``guest``, ``workspace``, ``network``, ...)."""
        self.data.update(fields)

    def finish(
        self,
        *,
        status: str,
        exit_code: int | None = None,
        signal: str | None = None,
        error: dict[str, Any] | None = None,
        cleanup: str = "done",
    ) -> dict[str, Any]:
        """Close the record (end time, total) and write it. Returns the record.

        ``cleanup`` is ``pending`` when the run's guest and network are still
        being released in the background (the record is written again, with
        ``done`` or ``failed``, when that ends).
        """
        self.data.update(
            status=status, exit_code=exit_code, signal=signal, error=error, cleanup=cleanup
        )
        self.data["ended_at"] = utc_now()
        self.timing("total_ms", (time.monotonic() - self._t0) * 1000)
        self.write()
        return self.data

    def write(self) -> Path:
        """Write the record atomically (temp file + rename) and return its path."""
        path = self.run_dir / RECORD_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path


def read_record(run_dir: Path) -> dict[str, Any]:
    """Load a run record; raises OSError, ValueError or TypeError if missing or corrupt."""
    value = json.loads((run_dir / RECORD_NAME).read_text())
    if not isinstance(value, dict):
        raise TypeError(f"{run_dir / RECORD_NAME} is not a JSON object")
    return value
