"""The server test fixtures (defined in tests/support/server_fixtures.py, shared by the
unit and integration tests)."""

from server_fixtures import server, short_tmp, sock

__all__ = ["server", "short_tmp", "sock"]
