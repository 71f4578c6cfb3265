"""Agent errors as the cleanroom errors callers see: one table, mapped by class.

Each :class:`~cleanroom.agent.AgentError` class has one row; the most specific
row wins (rows are tried in order, subclasses first). An ERROR frame from the
guest (:class:`~cleanroom.agent.AgentRemoteError`) is mapped by its wire code
through a second, closed table: the guest is untrusted, so it can never pick an
arbitrary cleanroom error, only the few its protocol defines; anything else is
``guest_agent_failed`` with the wire code in ``details["agent_code"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cleanroom.agent import (
    AgentDisconnected,
    AgentError,
    AgentNotReady,
    AgentProtocolError,
    AgentRemoteError,
    AgentTimeout,
)
from cleanroom.agent.protocol import ERR_VERSION
from cleanroom.errors import CleanroomError, GuestAgentFailed, RuntimeLaunchFailed, RunTimeout

__all__ = ["REMOTE_CODES", "GuestFacts", "translate_agent_error"]


class GuestFacts(Protocol):
    """What an error message needs of the guest (a ``cleanroom.backends.Guest`` has it)."""

    def console_tail(self, lines: int = 20) -> list[str]: ...

    def exited(self) -> int | None: ...


REMOTE_CODES: dict[str, type[CleanroomError]] = {
    # The guest's agent does not speak this host's protocol: the guest cannot serve runs.
    ERR_VERSION: RuntimeLaunchFailed,
}
"""Guest wire codes with a cleanroom error of their own (all others: ``guest_agent_failed``)."""


def _timeout(exc: AgentError, guest: GuestFacts) -> CleanroomError:
    return RunTimeout(f"the guest did not report a result in time: {exc.message}")


def _not_ready(exc: AgentError, guest: GuestFacts) -> CleanroomError:
    return RuntimeLaunchFailed(
        f"the guest agent did not answer: {exc.message}",
        details={"console_tail": guest.console_tail()},
    )


def _disconnected(exc: AgentError, guest: GuestFacts) -> CleanroomError:
    code = guest.exited()
    why = f"the VMM exited (status {code})" if code is not None else "the agent channel closed"
    return GuestAgentFailed(
        f"lost the guest during the run: {why}", details={"console_tail": guest.console_tail()}
    )


def _remote(exc: AgentError, guest: GuestFacts) -> CleanroomError:
    assert isinstance(exc, AgentRemoteError)
    cls = REMOTE_CODES.get(exc.remote_code, GuestAgentFailed)
    return cls(f"the guest agent reported an error: {exc}", details={"agent_code": exc.remote_code})


def _protocol(exc: AgentError, guest: GuestFacts) -> CleanroomError:
    return GuestAgentFailed(f"guest agent protocol failure: {exc}")


_Translate = Callable[[AgentError, GuestFacts], CleanroomError]

_BY_CLASS: tuple[tuple[type[AgentError], _Translate], ...] = (
    (AgentTimeout, _timeout),
    (AgentNotReady, _not_ready),
    (AgentDisconnected, _disconnected),
    (AgentRemoteError, _remote),
    (AgentProtocolError, _protocol),
    (AgentError, _protocol),
)


def translate_agent_error(exc: AgentError, guest: GuestFacts) -> CleanroomError:
    """The cleanroom error for ``exc`` raised while talking to ``guest``'s agent.

    The result's ``code`` equals the code the agent error class declares
    (``AgentError.code``) unless the guest reported a wire code of its own.
    """
    for cls, translate in _BY_CLASS:
        if isinstance(exc, cls):
            return translate(exc, guest)
    raise AssertionError("unreachable: AgentError is the last row")  # pragma: no cover
