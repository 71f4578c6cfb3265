"""The OpenAPI document matches what the server does (property-based, against a live server)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as oa_checks

from cleanroom.server import create_app, parse_listen
from cleanroom.testing import ServerThread, agent_service
from cleanroom.tokens import TokenStore

# Upload bodies are raw tar streams: arbitrary bytes here (refused as workspace_invalid).
schemathesis.openapi.media_type("application/x-tar", st.binary(max_size=4096))
DOC: dict[str, Any] = create_app(agent_service()).openapi()
schema = schemathesis.openapi.from_dict(DOC)

CHECKS = [
    st_checks.not_a_server_error,
    oa_checks.status_code_conformance,
    oa_checks.content_type_conformance,
    oa_checks.response_schema_conformance,
    oa_checks.negative_data_rejection,
]


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[str, dict[str, str]]]:
    """The server's base URL and the headers that authenticate to it."""
    root = Path(tempfile.mkdtemp(prefix="crs-oa-"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(root / "state"))
        try:
            auth = {"Authorization": "Bearer " + TokenStore().create("openapi")}
            with ServerThread(agent_service(), parse_listen("tcp://127.0.0.1:0")) as running:
                yield "http://" + running.url.removeprefix("tcp://"), auth
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_document_shape() -> None:
    paths = DOC["paths"]
    assert set(paths) == {
        "/healthz",
        "/v1/cleanrooms/launch",
        "/v1/cleanrooms/run",
        "/v1/cleanrooms/terminate",
        "/v1/exec",
        "/v1/cleanrooms",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/diff",
        "/v1/runs/{run_id}/artifacts/{path}",
        "/v1/runs/{run_id}/apply",
        "/v1/doctor",
        "/v1/workspaces",
    }
    run = paths["/v1/cleanrooms/run"]["post"]["responses"]
    assert "application/x-ndjson" in run["200"]["content"]
    assert run["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert "422" not in run  # validation failures are 400 invalid_request, not FastAPI's 422
    launch_body = DOC["components"]["schemas"]["LaunchRequest"]
    assert launch_body["additionalProperties"] is False
    upload = paths["/v1/workspaces"]["post"]
    assert "application/x-tar" in upload["requestBody"]["content"]
    assert upload["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WorkspaceUploaded"
    }


def test_the_bearer_scheme_and_its_401s_are_declared() -> None:
    schemes = DOC["components"]["securitySchemes"]
    assert set(schemes) == {"bearerToken"}
    scheme = schemes["bearerToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "TCP listener" in scheme["description"]
    assert "unix socket needs none" in scheme["description"]
    assert DOC["security"] == [{"bearerToken": []}]
    operations = [op for item in DOC["paths"].values() for op in item.values()]
    assert len(operations) >= len(DOC["paths"])
    for operation in operations:
        unauthorized = operation["responses"]["401"]
        assert unauthorized["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
        assert "`unauthenticated`" in unauthorized["description"]
        assert "`token_invalid`" in unauthorized["description"]
        assert "WWW-Authenticate" in unauthorized["headers"]
    assert "408" in DOC["paths"]["/v1/workspaces"]["post"]["responses"]


def test_the_401s_are_what_a_tcp_listener_answers(api: tuple[str, dict[str, str]]) -> None:
    base_url, auth = api
    bad = {"Authorization": "Bearer cr_not-a-token"}
    with httpx.Client(base_url=base_url, timeout=30) as http:
        assert http.get("/openapi.json", headers=auth).json() == DOC
        for method, path in [("get", "/healthz"), ("post", "/v1/exec"), ("get", "/v1/doctor")]:
            assert "401" in DOC["paths"][path][method]["responses"]
            for headers, code in [({}, "unauthenticated"), (bad, "token_invalid")]:
                response = http.request(method, path, headers=headers)
                assert response.status_code == 401
                assert set(response.json()) == {"error"}
                assert response.json()["error"]["code"] == code
                assert response.headers["www-authenticate"].startswith("Bearer")
        assert http.get("/openapi.json").status_code == 401


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_to_its_schema(case: Any, api: tuple[str, dict[str, str]]) -> None:
    base_url, auth = api
    response = case.call(base_url=base_url, headers=auth)
    if response.status_code == 413:
        # A generated body over the 1 MiB request cap (e.g. stdin_base64 past its
        # maxLength) is refused before validation: a rejection, with the API's error body.
        assert response.json()["error"]["code"] == "invalid_request"
        return
    case.validate_response(response, checks=CHECKS)
