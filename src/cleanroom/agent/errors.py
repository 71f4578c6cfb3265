"""Errors of the guest-agent protocol and host client (stdlib only: runs in the guest).

Each class carries a stable ``code`` that matches the code of the cleanroom
error the service translates it to; the service maps them by class::

    AgentError             guest_agent_failed
    ├── AgentProtocolError guest_agent_failed     malformed/oversized/unexpected frame
    ├── AgentDisconnected  guest_agent_failed     the stream ended or broke
    ├── AgentRemoteError   by wire code           the guest sent an ERROR frame: a closed
    │                                             table (``version_mismatch`` is
    │                                             runtime_launch_failed, anything else
    │                                             guest_agent_failed); see
    │                                             ``cleanroom.service.agent_errors``
    ├── AgentNotReady      runtime_launch_failed  no hello reply in time
    └── AgentTimeout       run_timeout            the guest did not report a result in time

:class:`GuestOperationFailed` is raised inside the guest only: an operation
(configure, workspace) failed and is reported in an ERROR frame with its
``wire_code``; the session goes on.
"""

from __future__ import annotations

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

__all__ = [
    "AgentDisconnected",
    "AgentError",
    "AgentNotReady",
    "AgentProtocolError",
    "AgentRemoteError",
    "AgentTimeout",
    "GuestOperationFailed",
]


class AgentError(Exception):
    """Base of every guest-agent failure."""

    code: ClassVar[str] = "guest_agent_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AgentProtocolError(AgentError):
    """A frame or message broke the protocol (size, type, JSON, keys, state)."""


class AgentDisconnected(AgentError):
    """The channel closed or failed before the expected reply arrived."""


class AgentRemoteError(AgentError):
    """The guest answered with an ERROR frame; ``remote_code`` is its stable wire code."""

    def __init__(self, remote_code: str, message: str) -> None:
        super().__init__(f"{remote_code}: {message}")
        self.remote_code = remote_code
        self.remote_message = message


class AgentNotReady(AgentError):
    """The guest did not answer the hello in time."""

    code = "runtime_launch_failed"


class AgentTimeout(AgentError):
    """The guest did not finish an operation within the host-side deadline."""

    code = "run_timeout"


class GuestOperationFailed(AgentError):
    """Guest side: a requested operation failed; reported as ERROR ``wire_code``."""

    def __init__(self, wire_code: str, message: str) -> None:
        super().__init__(message)
        self.wire_code = wire_code
