"""The runtime config's ``limits`` section: caps on what a guest or a client can grow.

::

    limits:
      console_log_bytes: 8388608       # guest console kept on disk (the rest is dropped)
      output_log_bytes: 268435456      # stdout.log / stderr.log each; past it: output_limit
      run_timeout_seconds: 3600        # a run whose request names no timeout gets this one
      workspace_bytes: 8589934592      # workspace input, bytes allocated on the host disk
      workspace_apparent_bytes: 68719476736  # workspace input, apparent size (sparse holes count)
      max_concurrent_runs: 16          # more at once: capacity_exhausted (503, Retry-After)
      runs_max_age_days: 30            # finished run directories older than this are pruned
      runs_max_count: 1000             # ... beyond this many (oldest first)
      runs_max_bytes: 21474836480      # ... until the rest take at most this much disk
      dns_tcp_clients: 8               # per run: concurrent TCP clients of the DNS filter
      dns_inflight_queries: 32         # per run: UDP queries answered at once (more: dropped)
      dns_queries_per_second: 100      # per run: DNS query rate (more: dropped, counted)
      dns_audit_bytes: 4194304         # per run: network-events.jsonl size cap
      upload_timeout_seconds: 1800     # an uploaded workspace must arrive whole within this
      upload_min_bytes: 65536          # ... and every this many bytes of it ...
      upload_window_seconds: 30        # ... within this long (else upload_timeout, 408)
      upload_ttl_seconds: 600          # an upload no launch or exec claims is removed after this

Every key is optional; the defaults are the values above.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cleanroom._yaml import YamlEntry
from cleanroom.config_reader import SectionReader

__all__ = ["DEFAULT_CONSOLE_LOG_BYTES", "LIMITS_KEYS", "LimitsConfig", "read_limits"]

DEFAULT_CONSOLE_LOG_BYTES = 8 << 20

LIMITS_KEYS = (
    "console_log_bytes",
    "output_log_bytes",
    "run_timeout_seconds",
    "workspace_bytes",
    "workspace_apparent_bytes",
    "max_concurrent_runs",
    "runs_max_age_days",
    "runs_max_count",
    "runs_max_bytes",
    "dns_tcp_clients",
    "dns_inflight_queries",
    "dns_queries_per_second",
    "dns_audit_bytes",
    "upload_timeout_seconds",
    "upload_min_bytes",
    "upload_window_seconds",
    "upload_ttl_seconds",
)

_MIN_LOG_BYTES = 4096
_MAX_TIMEOUT = 86400  # the longest timeout a request may give
_COUNT_MINIMUMS: dict[str, int] = {
    "console_log_bytes": _MIN_LOG_BYTES,
    "output_log_bytes": _MIN_LOG_BYTES,
    "workspace_bytes": 0,
    "workspace_apparent_bytes": 0,
    "max_concurrent_runs": 1,
    "runs_max_count": 0,
    "runs_max_bytes": 0,
    "dns_tcp_clients": 1,
    "dns_inflight_queries": 1,
    "dns_queries_per_second": 1,
    "dns_audit_bytes": _MIN_LOG_BYTES,
    "upload_min_bytes": 1,
}
"""The integer keys and the least each may be."""
_UPLOAD_SECONDS = ("upload_timeout_seconds", "upload_window_seconds", "upload_ttl_seconds")
"""Durations (above zero, at most a day) of the upload rules."""


@dataclass(frozen=True)
class LimitsConfig:
    """Caps on every resource a guest or a client can grow (see the module doc)."""

    console_log_bytes: int = DEFAULT_CONSOLE_LOG_BYTES
    output_log_bytes: int = 256 << 20
    run_timeout_seconds: float = 3600.0
    workspace_bytes: int = 8 << 30
    workspace_apparent_bytes: int = 64 << 30
    max_concurrent_runs: int = 16
    runs_max_age_days: float = 30.0
    runs_max_count: int = 1000
    runs_max_bytes: int = 20 << 30
    dns_tcp_clients: int = 8
    dns_inflight_queries: int = 32
    dns_queries_per_second: int = 100
    dns_audit_bytes: int = 4 << 20
    upload_timeout_seconds: float = 1800.0
    upload_min_bytes: int = 64 << 10
    upload_window_seconds: float = 30.0
    upload_ttl_seconds: float = 600.0


def read_limits(reader: SectionReader, section: dict[str, YamlEntry]) -> LimitsConfig:
    """Parse the ``limits`` section's entries (problems go to ``reader.problems``)."""
    d = LimitsConfig()
    timeout = reader.seconds(section, "run_timeout_seconds", "limits", d.run_timeout_seconds)
    if timeout > _MAX_TIMEOUT:
        entry = section["run_timeout_seconds"]
        reader.problems.add(
            entry.value.mark, "limits.run_timeout_seconds", f"must be at most {_MAX_TIMEOUT}"
        )
    counts = {
        name: reader.integer(section, name, "limits", getattr(d, name), minimum=low)
        for name, low in _COUNT_MINIMUMS.items()
    }
    return replace(
        d,
        run_timeout_seconds=min(timeout, _MAX_TIMEOUT),
        runs_max_age_days=reader.seconds(
            section, "runs_max_age_days", "limits", d.runs_max_age_days
        ),
        upload_timeout_seconds=_duration(reader, section, "upload_timeout_seconds", d),
        upload_window_seconds=_duration(reader, section, "upload_window_seconds", d),
        upload_ttl_seconds=_duration(reader, section, "upload_ttl_seconds", d),
        **counts,
    )


def _duration(
    reader: SectionReader, section: dict[str, YamlEntry], name: str, defaults: LimitsConfig
) -> float:
    """A positive number of seconds, at most a day."""
    default: float = getattr(defaults, name)
    value = reader.seconds(section, name, "limits", default)
    if value > _MAX_TIMEOUT:
        reader.problems.add(
            section[name].value.mark, f"limits.{name}", f"must be at most {_MAX_TIMEOUT}"
        )
        return default
    return value
