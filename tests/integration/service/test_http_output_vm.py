"""The HTTP API over the real service on a real guest (QEMU; TCG where KVM does not boot)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cleanroom.config import QemuConfig, RuntimeConfig
from cleanroom.server import ListenAddress
from cleanroom.service import Service
from cleanroom.service.output import CAPTURE_LIMIT
from cleanroom.testing import ServerThread

pytestmark = [pytest.mark.vm, pytest.mark.image]


@pytest.fixture
def vm_http(root: Path, state: Path) -> Iterator[httpx.Client]:
    service = Service(RuntimeConfig(qemu=QemuConfig(accel="tcg", launch_seconds=120)))
    sock = root / "run" / "vm.sock"
    with ServerThread(service, ListenAddress(scheme="unix", path=sock)):
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://cleanroom", timeout=300) as client:
            yield client


def test_output_past_the_capture_limit_is_flagged_in_response_and_record(
    vm_http: httpx.Client, repo: Path
) -> None:
    size = CAPTURE_LIMIT + 4096
    script = f"head -c {size} /dev/zero | tr '\\0' v; echo done >&2"
    response = vm_http.post("/v1/exec", json={"cwd": str(repo), "command": ["sh", "-c", script]})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["exit_code"] == 0
    assert result["stdout_truncated"] is True
    assert result["stderr_truncated"] is False
    assert result["stdout"] == "v" * CAPTURE_LIMIT
    assert result["stderr"] == "done\n"
    assert (Path(result["run_dir"]) / "stdout.log").stat().st_size == size
    record = vm_http.get(f"/v1/runs/{result['run_id']}").json()
    assert record["cleanup"] == "done"
    assert (record["stdout_truncated"], record["stderr_truncated"]) == (True, False)
