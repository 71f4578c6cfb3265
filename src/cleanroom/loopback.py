"""Whether a host name or address is this machine's alone (stdlib only)."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost`` or a loopback address).

    ``host`` is a bare name or address (no port, no brackets); any other name is
    not loopback, since what it resolves to can change."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
