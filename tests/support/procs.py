"""Process state as the tests see it."""

from __future__ import annotations

from pathlib import Path


def dead(pid: int | str) -> bool:
    """Gone, or a zombie: killed, waiting for whoever inherited it to reap it (an
    orphan's reaper may take seconds, which a test need not wait for)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
