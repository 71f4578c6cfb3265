"""limits.max_concurrent_runs on the real service behind a real server: one run too
many is refused with capacity_exhausted (503, Retry-After), and capacity comes back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cleanroom import paths
from cleanroom.config import LimitsConfig, RuntimeConfig
from cleanroom.errors import CapacityExhausted
from cleanroom.server import ListenAddress
from cleanroom.service import LaunchOptions, RunEvent, RunOutput, Service
from cleanroom.testing import AgentProcessBackend, ServerThread, agent_service

LIMITS = LimitsConfig(max_concurrent_runs=2)


@pytest.fixture
def service(backend: AgentProcessBackend, state: Path) -> Service:
    return agent_service(backend, config=RuntimeConfig(default_backend="qemu", limits=LIMITS))


@pytest.fixture
def http(service: Service, root: Path) -> Iterator[httpx.Client]:
    sock = root / "run" / "cap.sock"
    with ServerThread(service, ListenAddress(scheme="unix", path=sock)):
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://cleanroom", timeout=60) as client:
            yield client


def _start_sleeper(
    http: httpx.Client, cid: str, started: threading.Event, release: Path
) -> threading.Thread:
    """A run that holds its slot until ``release`` exists (a minute at most)."""
    wait = f"echo up; i=0; while [ ! -e {release} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1))"
    wait += "; done"

    def run() -> None:
        with http.stream(
            "POST",
            "/v1/cleanrooms/run",
            json={"cleanroom_id": cid, "command": ["sh", "-c", wait]},
            headers={"accept": "application/x-ndjson"},
        ) as response:
            for _ in response.iter_lines():
                started.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_one_run_too_many_is_503_with_retry_after(
    http: httpx.Client, repo: Path, root: Path
) -> None:
    cid = http.post("/v1/cleanrooms/launch", json={"cwd": str(repo)}).json()["cleanroom_id"]
    events = [threading.Event(), threading.Event()]
    release = root / "release"
    threads = [_start_sleeper(http, cid, e, release) for e in events]
    for event in events:
        assert event.wait(30)
    refused = http.post("/v1/cleanrooms/run", json={"cleanroom_id": cid, "command": ["true"]})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    error = refused.json()["error"]
    assert error["code"] == "capacity_exhausted"
    assert error["details"] == {"running": 2, "limit": 2, "retry_after": 5}
    streamed = http.post(
        "/v1/exec",
        json={"cwd": str(repo), "command": ["true"]},
        headers={"accept": "application/x-ndjson"},
    )
    assert (streamed.status_code, streamed.headers["retry-after"]) == (503, "5")
    release.touch()
    for thread in threads:
        thread.join(30)
    ran = http.post("/v1/cleanrooms/run", json={"cleanroom_id": cid, "command": ["true"]})
    assert ran.status_code == 200  # the slots came back


async def test_capacity_counts_runs_across_contexts(
    backend: AgentProcessBackend, repo: Path, state: Path
) -> None:
    svc = agent_service(backend, config=RuntimeConfig(default_backend="qemu", limits=LIMITS))
    await svc.start()
    started = asyncio.Event()

    async def sink(event: RunEvent) -> None:
        if isinstance(event, RunOutput):
            started.set()

    try:
        opts = LaunchOptions(run_dir=paths.state_dir() / "test-runs")
        first = await svc.launch(repo, options=opts)
        second = await svc.launch(repo, options=opts)
        runs = [
            asyncio.ensure_future(
                svc.run(info.cleanroom_id, ["sh", "-c", "echo up; sleep 30"], on_event=sink)
            )
            for info in (first, second)
        ]
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(0)
        with pytest.raises(CapacityExhausted):
            await svc.exec(repo, ["true"], options=opts)
        await svc.terminate(first.cleanroom_id)
        result = await svc.run(second.cleanroom_id, ["true"])  # one slot free again
        assert result.exit_code == 0
        await svc.terminate(second.cleanroom_id)
        await asyncio.gather(*runs, return_exceptions=True)
    finally:
        await svc.close()
    assert all(g.destroyed for g in backend.guests)
