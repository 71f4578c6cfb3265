"""The agent test fixtures (defined in tests/support/agent_fixtures.py, shared by the
unit and integration tests)."""

from agent_fixtures import agent, agents, guest_lib

__all__ = ["agent", "agents", "guest_lib"]
