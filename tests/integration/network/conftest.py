"""The network test fixtures (defined in tests/support/network_fixtures.py, shared by the
unit and integration tests)."""

from network_fixtures import guest_ns_factory, internet

__all__ = ["guest_ns_factory", "internet"]
