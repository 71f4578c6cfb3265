"""The run's network audit trail: ``<run_dir>/network-events.jsonl``.

One JSON object per line, each with ``run_id``, an RFC 3339 UTC ``ts`` and an
``event`` of ``dns`` (name, qtype, decision ``allowed``/``refused``/
``servfail``, answers, rule, and ``not_learned``: answer addresses kept out
of the allowed set with the reason), ``resolved`` (names resolved at setup),
``dns_limit`` (a DNS limit dropped messages: logged at the 1st, 2nd, 4th, ...
drop), ``blocked`` (dst, port, protocol, count) or, last, ``summary`` (DNS
counts and how many events the size cap left out).

The file is capped at ``max_bytes``: past it, one ``truncated`` event is
written and further events are only counted; the closing ``summary`` is
always written. Lines are buffered and written out when the buffer fills and
at :meth:`AuditLog.close`, so a query costs no system call of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

__all__ = ["DEFAULT_AUDIT_BYTES", "EVENTS_FILE", "AuditLog", "read_events"]

EVENTS_FILE = "network-events.jsonl"
DEFAULT_AUDIT_BYTES = 4 << 20


@dataclass
class AuditLog:
    """Appends events for one run; counts DNS decisions for the summary."""

    run_id: str
    path: Path
    max_bytes: int = DEFAULT_AUDIT_BYTES
    dns_allowed: int = 0
    dns_refused: int = 0
    dns_dropped: int = 0
    """Queries or connections dropped by a DNS limit (counted by the DNS filter)."""
    events_dropped: int = 0
    """Events left out by the size cap."""
    written: int = 0
    _fh: IO[str] | None = field(default=None, repr=False)
    _truncated: bool = field(default=False, repr=False)
    _summarised: bool = field(default=False, repr=False)

    def write(self, event: str, **fields: Any) -> None:
        """Append one event, unless the size cap is reached (then it is only counted)."""
        if event == "dns":
            if fields.get("decision") == "allowed":
                self.dns_allowed += 1
            else:
                self.dns_refused += 1
        if self._truncated:
            self.events_dropped += 1
            return
        line = self._line(event, fields)
        if self.written + len(line) > self.max_bytes:
            self._truncated = True
            self.events_dropped += 1
            self._emit(self._line("truncated", {"max_bytes": self.max_bytes}))
            return
        self._emit(line)

    def _line(self, event: str, fields: dict[str, Any]) -> str:
        record = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "run_id": self.run_id,
            "event": event,
            **fields,
        }
        return json.dumps(record, sort_keys=True) + "\n"

    def _emit(self, line: str) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(line)
        self.written += len(line)

    def summarise(self) -> None:
        """Write the closing ``summary`` event (once; past the cap too)."""
        if self._summarised:
            return
        self._summarised = True
        self._emit(
            self._line(
                "summary",
                {
                    "dns_allowed": self.dns_allowed,
                    "dns_refused": self.dns_refused,
                    "dns_dropped": self.dns_dropped,
                    "events_dropped": self.events_dropped,
                },
            )
        )

    def close(self) -> None:
        """Flush and close the file (further writes reopen it in append mode)."""
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
