"""TLS for the clients: contexts that verify the server as the credentials say.

A pinned fingerprint is checked on the handshake's certificate before any
request is sent. The blocking client checks its own socket
(:func:`secure_socket`); libraries that open their own connections (httpx,
websockets) get :func:`anchored_context`: one handshake fetches the
certificate and checks the pin, then a context that trusts exactly that
certificate (host name not checked: the pin is the identity) verifies every
later connection. A certificate that fails either way is ``ServerNotTrusted``.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import ssl

from cleanroom.client._auth import Credentials
from cleanroom.errors import ServerNotTrusted

__all__ = ["anchored_context", "client_context", "not_trusted", "secure_socket"]


def client_context(credentials: Credentials) -> ssl.SSLContext:
    """The context for a first handshake: CA file, system CAs, or (pinned) no
    verification by the library at all (the pin is checked by the caller)."""
    if credentials.tls_fingerprint is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif credentials.tls_ca is not None:
        context = ssl.create_default_context(cafile=str(credentials.tls_ca))
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def not_trusted(address: str, reason: str) -> ServerNotTrusted:
    """The error for a server whose certificate is not the one the client trusts."""
    return ServerNotTrusted(
        f"the TLS certificate of {address} is not trusted: {reason}",
        details={"address": address, "reason": reason},
    )


def _check_pin(credentials: Credentials, der: bytes | None, address: str) -> None:
    if credentials.tls_fingerprint is None:
        return
    if not der:
        raise not_trusted(address, "the server showed no certificate")
    seen = "sha256:" + hashlib.sha256(der).hexdigest()
    if not hmac.compare_digest(seen, credentials.tls_fingerprint):
        raise ServerNotTrusted(
            f"the TLS certificate of {address} is not the pinned one",
            details={"address": address, "expected": credentials.tls_fingerprint, "seen": seen},
        )


def secure_socket(
    sock: socket.socket, host: str, credentials: Credentials, address: str
) -> ssl.SSLSocket:
    """``sock`` after a TLS handshake with a verified server (``ServerNotTrusted``
    otherwise; ``OSError`` when the connection fails). Closes ``sock`` on failure."""
    try:
        tls = client_context(credentials).wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise not_trusted(address, exc.verify_message or str(exc)) from exc
    except BaseException:
        sock.close()
        raise
    try:
        _check_pin(credentials, tls.getpeercert(binary_form=True), address)
    except BaseException:
        tls.close()
        raise
    return tls


def anchored_context(
    host: str, port: int, credentials: Credentials, timeout: float, address: str
) -> ssl.SSLContext:
    """A context for a library's own connections to ``host:port`` (see the module doc).

    Without a pin, the plain :func:`client_context`. Raises ``ServerNotTrusted``,
    or ``OSError`` when the server cannot be reached.
    """
    if credentials.tls_fingerprint is None:
        return client_context(credentials)
    with secure_socket(
        socket.create_connection((host, port), timeout=timeout), host, credentials, address
    ) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None  # checked by secure_socket
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=der)
    return context
