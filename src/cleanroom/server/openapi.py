"""The OpenAPI document: FastAPI's, with the API's own error and security rules.

FastAPI renders the routes and wire models; this adds what it cannot know:

- validation failures are 400 ``invalid_request`` (not FastAPI's 422), so its
  generated 422 responses and their schemas are dropped;
- TCP listeners require a bearer token (see :mod:`cleanroom.server.auth`): the
  document declares the HTTP bearer scheme :data:`BEARER` for every operation
  and the 401 answers (``unauthenticated``, ``token_invalid``) in the same
  ``ErrorBody`` as every other error. The unix socket needs no token; the
  scheme's description says so (OpenAPI has no way to tie a scheme to a server).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

__all__ = ["BEARER", "install_openapi"]

BEARER = "bearerToken"
"""The name of the security scheme in ``components.securitySchemes``."""

_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API token made by `cleanroom token create NAME`, sent as "
    "`Authorization: Bearer <token>` on every request and WebSocket handshake to a "
    "TCP listener. The unix socket needs none: only its owner can open it.",
}
_UNAUTHORIZED = {
    "description": "`unauthenticated`: a TCP listener was asked without a bearer token; "
    "`token_invalid`: the token is malformed, unknown or revoked. Never on the unix socket.",
    "headers": {
        "WWW-Authenticate": {
            "description": 'The scheme expected: `Bearer realm="cleanroom"` (with '
            '`error="invalid_token"` for `token_invalid`).',
            "schema": {"type": "string"},
        }
    },
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def _document(app: FastAPI) -> dict[str, Any]:
    from fastapi.openapi.utils import get_openapi  # noqa: PLC0415 - only when served

    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            ref = str(responses.get("422", {}).get("content", {}))
            if "HTTPValidationError" in ref:
                del responses["422"]
            responses["401"] = _UNAUTHORIZED
    components = doc.setdefault("components", {})
    schemas = components.get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    components["securitySchemes"] = {BEARER: _SCHEME}
    doc["security"] = [{BEARER: []}]
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`_document` (made once, on first use) as ``app``'s OpenAPI document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
