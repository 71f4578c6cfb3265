"""What goes into a run and what comes back, through the real service, server and clients.

Guests are real agent processes (AgentProcessBackend): env and stdin reach the
command, the workspace's changes come back as a patch that real git applies,
``apply`` writes them to the host (or refuses a conflict), artifacts are kept
and served, and secret values stay out of the run directory.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import subprocess
from pathlib import Path

import pytest
from shared_server import shared_host  # noqa: F401 - the tests share one server

from cleanroom.client import AsyncClient, Client
from cleanroom.client._calls import Inputs, exec_
from cleanroom.errors import InvalidRequest, NotFound, WorkspaceConflict
from cleanroom.models import MAX_STDIN_BYTES, ChangeCounts, LaunchOptions, RunExit
from cleanroom.testing.backend import can_use_private_mounts

SECRET = "s3cr3t-value-9f1c27"


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_env_reaches_the_command_and_its_value_is_nowhere_in_the_run_dir(
    host: str, repo: Path
) -> None:
    with Client(host) as client:
        result = client.exec(
            repo,
            ["sh", "-c", 'test "$API_KEY" = "$EXPECTED" && echo same; echo "$OTHER"'],
            env={"API_KEY": SECRET, "EXPECTED": SECRET, "OTHER": "plain"},
        )
        record = client.run_record(result.run_id)
    assert result.stdout == "same\nplain\n"
    assert record["env"] == ["API_KEY", "EXPECTED", "OTHER"]
    files = _files(result.run_dir)
    assert any(p.name == "run-observability.json" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("name", ["", "A=B", "A\x00B"])
def test_malformed_env_names_are_invalid_request(host: str, repo: Path, name: str) -> None:
    with Client(host) as client, pytest.raises(InvalidRequest) as caught:
        client.exec(repo, ["true"], env={name: SECRET})
    assert SECRET not in str(caught.value)


def test_malformed_env_names_are_refused_by_the_server(host: str, repo: Path) -> None:
    """A client that skips the model's check gets 400 invalid_request, value not echoed."""
    path = host.removeprefix("unix://")
    body = {"cwd": str(repo), "command": ["true"], "env": {"A=B": SECRET}}
    conn = http.client.HTTPConnection("cleanroom")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(path)
    conn.request("POST", "/v1/exec", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 400
    assert json.loads(text)["error"]["code"] == "invalid_request"
    assert SECRET not in text


def test_stdin_is_delivered_then_eof_and_empty_without_it(host: str, repo: Path) -> None:
    data = b"hi\n\x00\xffbinary"
    with Client(host) as client:
        given = client.exec(repo, ["sh", "-c", "cat | od -An -c | tr -s ' '"], stdin=data)
        empty = client.exec(repo, ["sh", "-c", "cat; echo end"])
        record = client.run_record(given.run_id)
    assert "h i \\n \\0 377 b i n a r y" in given.stdout
    assert empty.stdout == "end\n"
    assert record["stdin_bytes"] == len(data)


def test_stdin_over_the_cap_is_invalid_request(host: str, repo: Path) -> None:
    with Client(host) as client, pytest.raises(InvalidRequest):
        client.exec(repo, ["cat"], stdin=b"x" * (MAX_STDIN_BYTES + 1))


def _git_repo_copy(repo: Path, dest: Path) -> None:
    subprocess.run(["cp", "-a", f"{repo}/.", str(dest)], check=True)


def test_changes_come_back_as_a_patch_git_applies(host: str, repo: Path, root: Path) -> None:
    (repo / "edit.txt").write_text("one\n")
    (repo / "gone.txt").write_text("bye\n")
    (repo / "tool.sh").write_text("#!/bin/sh\n")
    (repo / "blob.bin").write_bytes(bytes(range(256)))
    copy = root / "copy"
    copy.mkdir()
    _git_repo_copy(repo, copy)
    script = (
        "echo two >> edit.txt; rm gone.txt; chmod +x tool.sh; mkdir -p src; echo new > src/n.txt;"
        "ln -s src/n.txt link; printf '\\000\\001\\377' > blob.bin"
    )
    with Client(host) as client:
        result = client.exec(repo, ["sh", "-c", script])
        patch = client.run_diff(result.run_id)
        record = client.run_record(result.run_id)
    assert result.changes == ChangeCounts(
        added=3, modified=2, deleted=1, mode_changed=1, skipped=0, complete=True
    )
    listed = {(p["change"], p["path"]) for p in record["changes"]["paths"]}
    assert ("deleted", "gone.txt") in listed
    assert ("added", "link") in listed
    assert ("mode_changed", "tool.sh") in listed
    assert record["changes"]["patch"] == "changes/changes.patch"
    assert record["changes_ms"] is not None
    # The host is untouched by the run; the patch turns the copy into the result.
    assert (repo / "edit.txt").read_text() == "one\n"
    assert b"GIT binary patch" in patch
    subprocess.run(["git", "apply", "-"], cwd=copy, input=patch, check=True)
    assert (copy / "edit.txt").read_text() == "one\ntwo\n"
    assert not (copy / "gone.txt").exists()
    assert (copy / "src" / "n.txt").read_text() == "new\n"
    assert (copy / "link").readlink() == Path("src/n.txt")
    assert (copy / "tool.sh").stat().st_mode & 0o111
    assert (copy / "blob.bin").read_bytes() == b"\x00\x01\xff"


def test_apply_writes_the_changes_to_the_host(host: str, repo: Path) -> None:
    (repo / "edit.txt").write_text("one\n")
    (repo / "gone.txt").write_text("bye\n")
    with Client(host) as client:
        result = client.exec(
            repo, ["sh", "-c", "echo two >> edit.txt; rm gone.txt; echo new > n.txt"]
        )
        applied = client.apply_changes(result.run_id)
        # Applying twice finds the host changed since the copy: refused.
        with pytest.raises(WorkspaceConflict):
            client.apply_changes(result.run_id)
    assert (applied.written, applied.removed) == (2, 1)
    assert (repo / "edit.txt").read_text() == "one\ntwo\n"
    assert not (repo / "gone.txt").exists()
    assert (repo / "n.txt").read_text() == "new\n"


def test_apply_refuses_a_conflict_and_leaves_the_host_untouched(host: str, repo: Path) -> None:
    (repo / "a.txt").write_text("a\n")
    (repo / "b.txt").write_text("b\n")
    with Client(host) as client:
        result = client.exec(repo, ["sh", "-c", "echo run >> a.txt; echo run >> b.txt"])
        (repo / "b.txt").write_text("edited on the host meanwhile\n")
        with pytest.raises(WorkspaceConflict) as caught:
            client.apply_changes(result.run_id)
    assert caught.value.details["paths"] == ["b.txt"]
    assert (repo / "a.txt").read_text() == "a\n"
    assert (repo / "b.txt").read_text() == "edited on the host meanwhile\n"


def test_a_run_without_changes_has_an_empty_diff(host: str, repo: Path) -> None:
    with Client(host) as client:
        result = client.exec(repo, ["true"])
        assert client.run_diff(result.run_id) == b""
    assert result.changes == ChangeCounts(0, 0, 0, 0, 0, True)


@pytest.mark.skipif(not can_use_private_mounts(), reason="read-only needs a mount namespace")
def test_a_read_only_workspace_reports_no_changes(host: str, repo: Path) -> None:
    with Client(host) as client:
        result = client.exec(
            repo, ["sh", "-c", "echo x > /tmp/elsewhere-$$; true"],
            options=LaunchOptions(read_only_workspace=True),
        )  # fmt: skip
        assert result.changes is None
        with pytest.raises(InvalidRequest):
            client.run_diff(result.run_id)
        with pytest.raises(InvalidRequest):
            client.apply_changes(result.run_id)


def test_an_incomplete_change_set_has_no_patch(host: str, repo: Path) -> None:
    """Over the per-file cap (64 MiB) a change comes back without content: no patch."""
    with Client(host) as client:
        result = client.exec(
            repo, ["sh", "-c", "dd if=/dev/zero of=big bs=1M count=0 seek=65 2>/dev/null"]
        )
        assert result.changes is not None
        assert (result.changes.added, result.changes.skipped) == (1, 1)
        assert result.changes.complete is False
        with pytest.raises(InvalidRequest):
            client.run_diff(result.run_id)
        with pytest.raises(InvalidRequest):
            client.apply_changes(result.run_id)
    assert not (repo / "big").exists()


def test_artifacts_are_kept_listed_and_served(host: str, repo: Path) -> None:
    script = (
        "mkdir -p out/deep; echo a > out/a.txt; echo b > out/deep/b.txt; echo c > out/c.log;"
        "printf '\\377\\000' > report.bin"
    )
    with Client(host) as client:
        result = client.exec(
            repo, ["sh", "-c", script], artifacts=["out/**/*.txt", "report.bin", "nothing/*"]
        )
        paths = sorted(a.path for a in result.artifacts)
        assert paths == ["out/a.txt", "out/deep/b.txt", "report.bin"]
        assert client.run_artifact(result.run_id, "report.bin") == b"\xff\x00"
        assert client.run_artifact(result.run_id, "out/deep/b.txt") == b"b\n"
        record = client.run_record(result.run_id)
        for bad in ("../run-observability.json", "out/../../x", "/etc/passwd"):
            with pytest.raises((InvalidRequest, NotFound)):
                client.run_artifact(result.run_id, bad)
        with pytest.raises(NotFound):
            client.run_artifact(result.run_id, "out/c.log")  # not matched, not kept
    assert (result.run_dir / "artifacts" / "out" / "a.txt").read_text() == "a\n"
    listed = record["workspace_artifacts"]
    assert sorted(a["path"] for a in listed["artifacts"]) == paths
    assert listed["caps_hit"] == []


def test_a_glob_matching_nothing_gives_an_empty_list(host: str, repo: Path) -> None:
    with Client(host) as client:
        result = client.exec(repo, ["true"], artifacts=["*.nothing"])
    assert result.artifacts == ()
    assert result.artifacts_caps_hit == ()


@pytest.mark.parametrize("glob", ["/abs", "../up", "a//b", ""])
def test_bad_globs_are_invalid_request(host: str, repo: Path, glob: str) -> None:
    with Client(host) as client, pytest.raises(InvalidRequest):
        client.exec(repo, ["true"], artifacts=[glob])


def test_the_async_client_and_streams_carry_the_same(host: str, repo: Path) -> None:
    async def main() -> tuple[object, ...]:
        async with AsyncClient(host) as client:
            events = [
                e
                async for e in client.exec_stream(
                    repo,
                    ["sh", "-c", 'cat; echo "$K"; echo x > made.txt'],
                    env={"K": "v"},
                    stdin=b"in\n",
                    artifacts=["made.txt"],
                )
            ]
            exit_event = events[-1]
            assert isinstance(exit_event, RunExit)
            result = exit_event.result
            patch = await client.run_diff(result.run_id)
            art = await client.run_artifact(result.run_id, "made.txt")
            applied = await client.apply_changes(result.run_id)
            return result, patch, art, applied

    result, patch, art, applied = asyncio.run(main())
    assert result.stdout == "in\nv\n"  # type: ignore[attr-defined]
    assert b"+x" in patch  # type: ignore[operator]
    assert art == b"x\n"
    assert applied.written == 1  # type: ignore[attr-defined]
    assert (repo / "made.txt").read_text() == "x\n"


def test_run_in_a_context_takes_the_same_inputs(host: str, repo: Path) -> None:
    with Client(host) as client:
        launched = client.launch(repo)
        try:
            result = client.run(
                launched.cleanroom_id,
                ["sh", "-c", 'printf %s "$N"; cat; echo z > z.txt'],
                env={"N": "1"},
                stdin=b"2",
                artifacts=["z.txt"],
            )
        finally:
            client.terminate(launched.cleanroom_id)
    assert result.stdout == "12"
    assert [a.path for a in result.artifacts] == ["z.txt"]
    assert result.changes is not None
    assert result.changes.added == 1


def test_stdin_travels_base64_in_the_request() -> None:
    call = exec_("/r", ["cat"], None, None, None, Inputs(stdin=b"\xff\x00"))
    assert call.body is not None
    assert base64.b64decode(call.body["stdin_base64"]) == b"\xff\x00"
