"""``options.run_dir`` only under the configured roots (default: the state directory),
against the real service (agent-process guests)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cleanroom import paths
from cleanroom.config import RuntimeConfig
from cleanroom.errors import InvalidRequest
from cleanroom.models import LaunchOptions
from cleanroom.server import parse_listen
from cleanroom.service.checks import checked_run_dir
from cleanroom.testing import AgentProcessBackend, ServerThread, agent_service
from cleanroom.tokens import TokenStore


def test_default_root_is_the_state_dir(tmp_path: Path) -> None:
    assert checked_run_dir(None, None) == paths.state_dir() / "runs"
    inside = paths.state_dir() / "mine" / "runs"
    assert checked_run_dir(inside, None) == inside
    assert inside.is_dir()
    for outside in (tmp_path / "runs", Path("/etc/cleanroom-runs"), paths.state_dir().parent):
        with pytest.raises(InvalidRequest, match="not under an allowed root") as caught:
            checked_run_dir(outside, None)
        assert caught.value.details["roots"] == [str(paths.state_dir())]
    assert not (tmp_path / "runs").exists()  # refused before anything was made


def test_dot_dot_and_symlinks_are_resolved(tmp_path: Path) -> None:
    state = paths.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    with pytest.raises(InvalidRequest):
        checked_run_dir(state / ".." / "escaped", None)
    (state / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidRequest):
        checked_run_dir(state / "link" / "runs", None)
    assert not (tmp_path / "runs").exists()


def test_configured_roots(tmp_path: Path) -> None:
    roots = (tmp_path / "a", tmp_path / "b")
    assert checked_run_dir(tmp_path / "b" / "x", roots) == tmp_path / "b" / "x"
    with pytest.raises(InvalidRequest):
        checked_run_dir(paths.state_dir() / "runs-x", roots)  # the default no longer applies
    with pytest.raises(InvalidRequest):
        checked_run_dir(tmp_path / "a", ())  # an empty list allows no run_dir at all


async def test_launch_refuses_a_run_dir_outside_the_roots(repo: Path, root: Path) -> None:
    service = agent_service(AgentProcessBackend())
    await service.start()
    try:
        with pytest.raises(InvalidRequest) as caught:
            await service.launch(repo, options=LaunchOptions(run_dir=root / "elsewhere"))
        assert caught.value.details["run_dir"] == str(root / "elsewhere")
        assert not (root / "elsewhere").exists()
        inside = paths.state_dir() / "custom"
        info = await service.launch(repo, options=LaunchOptions(run_dir=inside))
        assert info.run_dir_root == inside
        await service.terminate(info.cleanroom_id)
    finally:
        await service.close()

    configured = agent_service(
        AgentProcessBackend(), config=RuntimeConfig(run_dir_roots=(root / "allowed",))
    )
    await configured.start()
    try:
        info = await configured.launch(repo, options=LaunchOptions(run_dir=root / "allowed" / "r"))
        assert info.run_dir_root == root / "allowed" / "r"
    finally:
        await configured.close()


def test_run_dir_outside_the_roots_over_tcp(repo: Path, root: Path, state: Path) -> None:
    token = TokenStore().create("ci")
    with ServerThread(agent_service(), parse_listen("tcp://127.0.0.1:0")) as running:
        base = "http://" + running.url.removeprefix("tcp://")
        body = {"cwd": str(repo), "command": ["true"], "options": {"run_dir": str(root / "x")}}
        response = httpx.post(
            base + "/v1/exec", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert not (root / "x").exists()
