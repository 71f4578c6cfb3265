"""The agent-process backend now lives in :mod:`cleanroom.testing`; re-exported for these tests."""

from cleanroom.testing.backend import SRC, AgentProcessBackend, AgentProcessGuest

__all__ = ["SRC", "AgentProcessBackend", "AgentProcessGuest"]
