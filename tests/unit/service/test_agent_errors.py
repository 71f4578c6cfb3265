"""Agent errors map by class (and a guest's wire code by a closed table) to cleanroom errors."""

from __future__ import annotations

import pytest

from cleanroom.agent import (
    AgentDisconnected,
    AgentError,
    AgentNotReady,
    AgentProtocolError,
    AgentRemoteError,
    AgentTimeout,
)
from cleanroom.agent.protocol import (
    ERR_BUSY,
    ERR_CONFIGURE,
    ERR_INTERNAL,
    ERR_PROTOCOL,
    ERR_VERSION,
    ERR_WORKSPACE,
)
from cleanroom.errors import CleanroomError, GuestAgentFailed, RuntimeLaunchFailed, RunTimeout
from cleanroom.service.agent_errors import translate_agent_error


class Facts:
    def __init__(self, exited: int | None = None) -> None:
        self._exited = exited

    def console_tail(self, lines: int = 20) -> list[str]:
        return ["[    0.1] last console line"]

    def exited(self) -> int | None:
        return self._exited


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (AgentTimeout("no exit"), RunTimeout),
        (AgentNotReady("no hello"), RuntimeLaunchFailed),
        (AgentDisconnected("closed"), GuestAgentFailed),
        (AgentProtocolError("bad frame"), GuestAgentFailed),
        (AgentError("other"), GuestAgentFailed),
    ],
)
def test_each_agent_error_class_keeps_its_declared_code(
    error: AgentError, expected: type[CleanroomError]
) -> None:
    mapped = translate_agent_error(error, Facts())
    assert type(mapped) is expected
    # The code agent/errors.py promises for the class is the code the caller sees.
    assert mapped.code == type(error).code


def test_not_ready_carries_the_console_tail() -> None:
    mapped = translate_agent_error(AgentNotReady("no hello"), Facts())
    assert mapped.details["console_tail"] == ["[    0.1] last console line"]


def test_disconnect_says_whether_the_vmm_died() -> None:
    died = translate_agent_error(AgentDisconnected("closed"), Facts(exited=137))
    assert "the VMM exited (status 137)" in died.message
    closed = translate_agent_error(AgentDisconnected("closed"), Facts())
    assert "the agent channel closed" in closed.message
    assert closed.details["console_tail"] == ["[    0.1] last console line"]


@pytest.mark.parametrize(
    ("wire_code", "expected"),
    [
        (ERR_VERSION, RuntimeLaunchFailed),
        (ERR_BUSY, GuestAgentFailed),
        (ERR_WORKSPACE, GuestAgentFailed),
        (ERR_CONFIGURE, GuestAgentFailed),
        (ERR_PROTOCOL, GuestAgentFailed),
        (ERR_INTERNAL, GuestAgentFailed),
        # The guest is untrusted: a cleanroom code it names picks nothing.
        ("run_timeout", GuestAgentFailed),
        ("policy_invalid", GuestAgentFailed),
    ],
)
def test_guest_refusals_map_by_wire_code(wire_code: str, expected: type[CleanroomError]) -> None:
    mapped = translate_agent_error(AgentRemoteError(wire_code, "refused"), Facts())
    assert type(mapped) is expected
    assert mapped.details["agent_code"] == wire_code
