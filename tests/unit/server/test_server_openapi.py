"""The OpenAPI document matches what the server does (property-based, against a live server)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as oa_checks

from cleanroom.server import create_app, parse_listen
from cleanroom.testing import ServerThread, agent_service

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
def base_url() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="crs-oa-"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(root / "state"))
        try:
            with ServerThread(agent_service(), parse_listen("tcp://127.0.0.1:0")) as running:
                yield "http://" + running.url.removeprefix("tcp://")
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


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_to_its_schema(case: Any, base_url: str) -> None:
    response = case.call(base_url=base_url)
    if response.status_code == 413:
        # A generated body over the 1 MiB request cap (e.g. stdin_base64 past its
        # maxLength) is refused before validation: a rejection, with the API's error body.
        assert response.json()["error"]["code"] == "invalid_request"
        return
    case.validate_response(response, checks=CHECKS)
