"""The guest agent and its framed protocol (both ends).

Stdlib only, and importing nothing from ``cleanroom`` outside this package: the
guest image carries exactly these files. The host client (:mod:`.host`, which
pulls in asyncio) is loaded on first use so the guest's cold start stays lean.
"""

from __future__ import annotations

from cleanroom.agent import errors
from cleanroom.agent.errors import *  # noqa: F403 - the protocol's errors, each named there
from cleanroom.agent.messages import ExitStatus, GuestInfo, GuestNetwork, WorkspaceStats
from cleanroom.agent.protocol import AGENT_VERSION, PROTOCOL_VERSION

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cleanroom.agent.host import AgentClient, OutputCallback

__all__ = [
    "AGENT_VERSION",
    "PROTOCOL_VERSION",
    "AgentClient",
    "ExitStatus",
    "GuestInfo",
    "GuestNetwork",
    "OutputCallback",
    "WorkspaceStats",
]
__all__ += errors.__all__


def __getattr__(name: str) -> Any:
    if name in ("AgentClient", "OutputCallback"):
        from cleanroom.agent import host  # noqa: PLC0415 -- deferred: asyncio is not for the guest

        return getattr(host, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
