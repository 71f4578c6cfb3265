"""What each listener asks of its callers: the authenticator and the TLS certificate.

:class:`ServeSecurity` is the server-wide input (the token store, the TLS
certificate if any, whether loopback TCP uses it too); :func:`setup_listener`
applies a listener kind's rules (:data:`~cleanroom.server.listen.LISTENER_KINDS`)
to it. A listener that requires TLS without a certificate is refused before
anything is served.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cleanroom.errors import InvalidRequest
from cleanroom.server.auth import Authenticator
from cleanroom.server.listen import BoundListener, ListenAddress, listener_kind
from cleanroom.server.tls import TlsFiles
from cleanroom.tokens import TokenStore

__all__ = ["ListenerSetup", "ServeSecurity", "needs_tls", "setup_listener"]


@dataclass(frozen=True)
class ServeSecurity:
    """Server-wide security inputs; the defaults: the state directory's token file, no TLS."""

    tokens: TokenStore = field(default_factory=TokenStore)
    tls: TlsFiles | None = None
    tls_on_loopback: bool = False
    """Loopback TCP listeners use ``tls`` too (otherwise only non-loopback ones)."""


@dataclass(frozen=True)
class ListenerSetup:
    """How one listener is served."""

    authenticator: Authenticator
    tls: TlsFiles | None

    def client_url(self, listener: BoundListener) -> str:
        """The address a client uses: ``https://`` for a TLS listener, else the listen URL."""
        url = listener.url()
        if self.tls is not None and url.startswith("tcp://"):
            return "https://" + url.removeprefix("tcp://")
        return url


def _uses_tls(address: ListenAddress, tls_on_loopback: bool) -> bool:
    need = listener_kind(address).tls(address)
    return need == "required" or (need == "optional" and tls_on_loopback)


def needs_tls(addresses: Iterable[ListenAddress], tls_on_loopback: bool) -> bool:
    """Whether any of ``addresses`` is served over TLS (so a certificate is needed)."""
    return any(_uses_tls(address, tls_on_loopback) for address in addresses)


def setup_listener(listener: BoundListener, security: ServeSecurity) -> ListenerSetup:
    """The authenticator and certificate for ``listener``; ``InvalidRequest`` when it
    requires TLS and ``security`` has no certificate."""
    kind = listener_kind(listener.address)
    tls: TlsFiles | None = None
    if _uses_tls(listener.address, security.tls_on_loopback):
        if security.tls is None:
            raise InvalidRequest(
                f"{listener.address.url()} requires TLS and no certificate was given",
                details={"address": listener.address.url()},
            )
        tls = security.tls
    return ListenerSetup(kind.authenticator(security.tokens), tls)
