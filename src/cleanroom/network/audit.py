"""The run's network audit trail: ``<run_dir>/network-events.jsonl``.

One JSON object per line, each with ``run_id``, an RFC 3339 UTC ``ts`` and an
``event`` of ``dns`` (name, qtype, decision ``allowed``/``refused``/
``servfail``, answers, rule) or ``blocked`` (dst, port, protocol, count).
Lines are flushed as they are written so a crash loses at most the events not
yet read from the firewall.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

__all__ = ["EVENTS_FILE", "AuditLog", "read_events"]

EVENTS_FILE = "network-events.jsonl"


@dataclass
class AuditLog:
    """Appends events for one run; counts DNS decisions for the summary."""

    run_id: str
    path: Path
    dns_allowed: int = 0
    dns_refused: int = 0
    _fh: IO[str] | None = field(default=None, repr=False)

    def write(self, event: str, **fields: Any) -> None:
        """Append one event (no-op after :meth:`close`)."""
        if event == "dns":
            if fields.get("decision") == "allowed":
                self.dns_allowed += 1
            else:
                self.dns_refused += 1
        record = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "run_id": self.run_id,
            "event": event,
            **fields,
        }
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (further writes reopen it in append mode)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """All events of a run directory, oldest first (empty if none were written)."""
    path = run_dir / EVENTS_FILE
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
