"""Authentication in front of the app: who may use a listener.

Each listener kind names its :class:`Authenticator` (see
:mod:`cleanroom.server.listen`). The unix socket's is :class:`OwnerOnly`:
the socket file is 0600 in a 0700 directory, so the kernel has already
admitted only this user. TCP's is :class:`BearerTokens`: every HTTP request
and every WebSocket handshake must carry ``Authorization: Bearer <token>``
naming a token of the :class:`~cleanroom.tokens.TokenStore`, checked per
request (a revoked token is refused from the next request on). A further
listener kind (a tailnet's, say) brings its own authenticator.

Refusals are the API's error bodies: no credentials is 401 ``unauthenticated``,
an unknown or revoked token 401 ``token_invalid``, both with
``WWW-Authenticate: Bearer``. A WebSocket handshake is refused the same way
(an HTTP response instead of the upgrade) where the server supports it, else
closed with 1008 (policy violation).
"""

from __future__ import annotations

import json
from typing import Protocol

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from cleanroom.errors import CleanroomError, ConfigInvalid, TokenInvalid, Unauthenticated
from cleanroom.tokens import TokenStore

__all__ = ["Authenticator", "BearerTokens", "Gate", "OwnerOnly"]

_log = structlog.get_logger("cleanroom.server")
_DENIAL = "websocket.http.response"


class Authenticator(Protocol):
    """Decides whether a request's connection and headers may use the API."""

    def authenticate(self, scope: Scope) -> str | None:
        """The principal's name (for the log), ``None`` for the listener's owner.

        Raises ``Unauthenticated`` (or a subclass) to refuse the request.
        """
        ...


class OwnerOnly:
    """The unix socket: the filesystem admits only the owner; nothing to check here."""

    def authenticate(self, scope: Scope) -> str | None:
        """Always admits (the socket's permissions already did the work)."""
        return None


def bearer_token(scope: Scope) -> str | None:
    """The token of the request's ``Authorization: Bearer`` header (``None``: no header).

    Raises ``TokenInvalid`` for an ``Authorization`` header of another form.
    """
    values = [value for name, value in scope.get("headers", ()) if name == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise TokenInvalid("more than one Authorization header")
    header: str = bytes(values[0]).decode("latin-1")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenInvalid("the Authorization header must be 'Bearer <token>'")
    return token.strip()


class BearerTokens:
    """Admits requests bearing a token of ``store`` (re-read whenever its file changes)."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    def authenticate(self, scope: Scope) -> str | None:
        """The token's name; raises ``Unauthenticated``/``TokenInvalid``."""
        token = bearer_token(scope)
        if token is None:
            raise Unauthenticated(
                "this listener requires an API token (Authorization: Bearer <token>)",
                details={"hint": "create one with `cleanroom token create NAME`"},
            )
        try:
            name = self.store.verify(token)
        except ConfigInvalid as exc:
            # Fail closed, and keep the server's file paths from the caller.
            _log.error("token_file_unusable", error=exc.message)
            raise CleanroomError("the server cannot check tokens now") from exc
        if name is None:
            raise TokenInvalid("the API token is not valid (unknown or revoked)")
        return name


class Gate:
    """ASGI middleware: ``authenticator`` admits a request before ``app`` sees it."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self._app = app
        self._authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse, or pass the request on with ``scope['cleanroom.principal']`` set."""
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        try:
            principal = self._authenticator.authenticate(scope)
        except CleanroomError as exc:
            _log.info("request_refused", path=scope.get("path"), code=exc.code)
            await _refuse(scope, send, exc)
            return
        scope["cleanroom.principal"] = principal
        await self._app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, exc: CleanroomError) -> None:
    body = json.dumps(exc.to_dict()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in exc.http_headers().items()),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif _DENIAL in scope.get("extensions", {}):
        await send({"type": f"{_DENIAL}.start", "status": exc.status, "headers": headers})
        await send({"type": f"{_DENIAL}.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": exc.code})
