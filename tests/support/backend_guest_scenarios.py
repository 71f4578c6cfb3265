"""The backend scenarios now live in :mod:`cleanroom.testing.conformance`; re-exported here."""

from cleanroom.testing.conformance import (
    BOOT_SECONDS,
    LEFTOVERS,
    Output,
    commands_and_discarded_writes,
    fresh_dir,
    launch_deadline_too_short,
)

__all__ = [
    "BOOT_SECONDS",
    "LEFTOVERS",
    "Output",
    "commands_and_discarded_writes",
    "fresh_dir",
    "launch_deadline_too_short",
]
