"""The run record: ``<run_dir>/run-observability.json``, one schema for every backend.

A :class:`RunRecorder` is filled in while a run progresses (timings, outcome)
and written atomically at the end, also when the run fails, so every run
leaves a complete record. Callers fill it through typed methods only
(:meth:`RunRecorder.timed`, :meth:`RunRecorder.add_artifact`, ...); the JSON
keys and their meaning are the record's public schema.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cleanroom.errors import CleanroomError
from cleanroom.service.ids import utc_now

__all__ = [
    "ARTIFACT_KEYS",
    "RECORD_NAME",
    "SCHEMA_VERSION",
    "TIMING_KEYS",
    "Cleanup",
    "JsonValue",
    "RunRecorder",
    "Status",
    "WorkspaceFacts",
    "error_dict",
    "read_record",
]

RECORD_NAME = "run-observability.json"
SCHEMA_VERSION = 1

TIMING_KEYS = (
    "policy_resolution_ms",
    "workspace_scan_ms",
    "boot_queue_ms",
    "rootfs_prepare_ms",
    "workspace_disk_ms",
    "vmm_start_ms",
    "restore_ms",
    "workspace_archive_ms",
    "network_setup_ms",
    "vm_ready_ms",
    "agent_connect_wait_ms",
    "configure_ms",
    "workspace_transfer_ms",
    "workspace_baseline_ms",
    "command_ms",
    "changes_ms",
    "artifacts_ms",
    "network_cleanup_ms",
    "guest_teardown_ms",
    "total_ms",
)
"""Every timing a record carries (milliseconds; ``null`` when the run ended before that step)."""

ARTIFACT_KEYS = ("stdout", "stderr", "console", "plan")
"""The files a record names under ``artifacts`` (relative to the run directory)."""

JsonValue = str | int | float | bool | None | Sequence["JsonValue"] | Mapping[str, "JsonValue"]
"""A value the record can hold."""

Status = Literal["running", "exited", "error", "timeout", "cancelled"]
Cleanup = Literal["pending", "done", "failed"]


@dataclass(frozen=True)
class WorkspaceFacts:
    """How the workspace reached the guest (the record's ``workspace`` object)."""

    method: Literal["disk", "stream"]
    files: int
    bytes: int
    archive_bytes: int
    skipped: tuple[str, ...]
    extracted_files: int
    refused: int
    read_only: bool

    def to_dict(self) -> dict[str, JsonValue]:
        """The record's JSON object."""
        return {
            "method": self.method,
            "files": self.files,
            "bytes": self.bytes,
            "archive_bytes": self.archive_bytes,
            "skipped": list(self.skipped),
            "extracted_files": self.extracted_files,
            "refused": self.refused,
            "read_only": self.read_only,
        }


def error_dict(exc: CleanroomError) -> dict[str, JsonValue]:
    """The record's ``error`` / ``cleanup_error`` object for ``exc``."""
    return {"code": exc.code, "message": exc.message}


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
        self._artifacts: dict[str, str | None] = {
            "stdout": "stdout.log",
            "stderr": "stderr.log",
            "console": "console.log",
            "plan": None,
        }
        self._data: dict[str, JsonValue] = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "cleanroom_id": cleanroom_id,
            "backend": backend,
            "isolation": None,
            "policy_hash": policy_hash,
            "command": list(command),
            "status": "running",
            "exit_code": None,
            "signal": None,
            "error": None,
            "started_at": utc_now(),
            "ended_at": None,
            "cleanup": "pending",
            "cleanup_error": None,
            "pool": "miss",
            "start": None,
            "start_fallback": None,
            "rootfs_method": None,
            "guest": None,
            "workspace": None,
            "network": None,
            "image": None,
            "resources": None,
            "stdout_truncated": False,
            "stderr_truncated": False,
            "artifacts": self._artifacts,
            "env": [],
            "stdin_bytes": None,
            "changes": None,
            "workspace_artifacts": None,
        }
        for key in TIMING_KEYS:
            self._data[key] = None

    # -- timings -----------------------------------------------------------------------

    def timing(self, key: str, ms: float) -> None:
        """Record ``key`` (one of :data:`TIMING_KEYS`) in milliseconds, rounded to 0.1 ms."""
        if key not in TIMING_KEYS:
            raise KeyError(key)
        self._data[key] = round(ms, 1)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Record the wall time of the ``with`` body as ``<step>_ms``.

        Only a body that completes is recorded: a step that raised did not
        take that long, it never finished. Works around ``await`` too (it
        measures elapsed time, not CPU time).
        """
        key = f"{step}_ms"
        if key not in TIMING_KEYS:
            raise KeyError(key)
        started = time.monotonic()
        yield
        self.timing(key, (time.monotonic() - started) * 1000)

    # -- facts -------------------------------------------------------------------------

    def add_artifact(self, kind: str, name: str) -> None:
        """Name the run directory's file of ``kind`` (one of :data:`ARTIFACT_KEYS`)."""
        if kind not in ARTIFACT_KEYS:
            raise KeyError(kind)
        self._artifacts[kind] = name

    def set_guest(
        self, *, isolation: str, agent_version: str | None = None, kernel: str | None = None
    ) -> None:
        """The guest's isolation level and (once it answered) its agent and kernel."""
        self._data["isolation"] = isolation
        if agent_version is not None and kernel is not None:
            self._data["guest"] = {"agent_version": agent_version, "kernel": kernel}

    def set_pool(
        self,
        outcome: str,
        *,
        boot_ms: float | None = None,
        idle_ms: float | None = None,
        restored: bool = False,
        fallback: str | None = None,
        passes: int | None = None,
    ) -> None:
        """``pool`` (``hit`` or ``miss``); for a hit, the pooled guest's start time
        (booted or ``restored`` from a snapshot, ready for a run), idle time, for a
        booted one why it was not restored, and how many self-test passes it had
        (``self_test_passes``; the more, the faster its first run)."""
        self._data["pool"] = outcome
        if boot_ms is not None and idle_ms is not None:
            self._data["pool_guest"] = {
                "boot_ms": round(boot_ms, 1),
                "idle_ms": round(idle_ms, 1),
                "start": "restored" if restored else "cold",
                "start_fallback": fallback,
                "self_test_passes": passes,
            }

    def set_start(self, start: str, fallback: str | None = None) -> None:
        """How the guest started (``restored``, ``cold`` or ``warm``) and, for a cold
        start, why it was not restored from a snapshot."""
        self._data["start"] = start
        self._data["start_fallback"] = fallback

    def set_rootfs_method(self, method: str) -> None:
        """How the backend made the guest's copy-on-write rootfs."""
        self._data["rootfs_method"] = method

    def set_sandbox(
        self, *, image: Mapping[str, str] | None, resources: Mapping[str, int | None]
    ) -> None:
        """The user image (``{"key", "source"}``; None: the built-in one) and machine size."""
        self._data["image"] = None if image is None else dict(image)
        self._data["resources"] = dict(resources)

    def set_workspace(self, facts: WorkspaceFacts) -> None:
        """How the workspace reached the guest."""
        self._data["workspace"] = facts.to_dict()

    def set_inputs(self, *, env_names: Sequence[str], stdin_bytes: int | None) -> None:
        """What went into the command: the environment's names (never its values) and
        the size of its standard input (None: empty stdin)."""
        self._data["env"] = sorted(env_names)
        self._data["stdin_bytes"] = stdin_bytes

    def set_changes(self, summary: Mapping[str, JsonValue]) -> None:
        """The workspace changes (counts, paths up to a cap, caps hit, patch facts)."""
        self._data["changes"] = dict(summary)

    def update_changes(self, **facts: JsonValue) -> None:
        """Add facts to the ``changes`` object (e.g. once the patch is rendered)."""
        current = self._data.get("changes")
        base = dict(current) if isinstance(current, Mapping) else {}
        self._data["changes"] = {**base, **facts}

    def set_workspace_artifacts(self, listing: Mapping[str, JsonValue]) -> None:
        """The files copied out by the request's artifact globs (in ``artifacts/``)."""
        self._data["workspace_artifacts"] = dict(listing)

    def set_network(self, summary: Mapping[str, JsonValue]) -> None:
        """The run's network summary (``mode``, counters, ...)."""
        self._data["network"] = dict(summary)

    def set_no_network(self) -> None:
        """The run had no network path at all."""
        self.set_network({"mode": "none", "allowed": 0, "blocked": 0})

    def set_output(self, *, stdout_truncated: bool, stderr_truncated: bool) -> None:
        """Whether each stream wrote more than the response kept (the logs hold it all)."""
        self._data["stdout_truncated"] = stdout_truncated
        self._data["stderr_truncated"] = stderr_truncated

    # -- outcome -----------------------------------------------------------------------

    def finish(
        self,
        *,
        status: Status,
        exit_code: int | None = None,
        signal: str | None = None,
        error: CleanroomError | None = None,
        cleanup: Cleanup = "done",
    ) -> dict[str, JsonValue]:
        """Close the record (end time, total) and write it. Returns the record.

        ``cleanup`` is ``pending`` when the run's guest and network are still
        being released in the background (the record is written again, with
        ``done`` or ``failed``, by :meth:`cleaned_up`).
        """
        self._data.update(
            status=status,
            exit_code=exit_code,
            signal=signal,
            error=None if error is None else error_dict(error),
            cleanup=cleanup,
        )
        self._data["ended_at"] = utc_now()
        self.timing("total_ms", (time.monotonic() - self._t0) * 1000)
        self.write()
        return self.snapshot()

    def cleaned_up(self, failure: CleanroomError | None = None) -> None:
        """Release after the answer ended (``failure``: how it failed); writes the record."""
        self._data["cleanup"] = "done" if failure is None else "failed"
        if failure is not None:
            self._data["cleanup_error"] = error_dict(failure)
        self.write()

    def snapshot(self) -> dict[str, JsonValue]:
        """A deep copy of the record as it stands."""
        return copy.deepcopy(self._data)

    def write(self) -> Path:
        """Write the record atomically (temp file + rename) and return its path."""
        path = self.run_dir / RECORD_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path


def read_record(run_dir: Path) -> dict[str, object]:
    """Load a run record; raises OSError, ValueError or TypeError if missing or corrupt."""
    value = json.loads((run_dir / RECORD_NAME).read_text())
    if not isinstance(value, dict):
        raise TypeError(f"{run_dir / RECORD_NAME} is not a JSON object")
    return value
