"""``cleanroom exec`` inputs and outputs, run as real processes against a real server
(agent-process guests): -e, --env-file, -i, --diff, --apply, --artifact/--out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_run import cli, cli_env
from shared_server import shared_host  # noqa: F401 - the tests share one server

from cleanroom.cli.runio import read_env
from cleanroom.errors import InvalidRequest

SECRET = "cli-secret-6c0ffee"


@pytest.fixture
def env(root: Path, host: str) -> dict[str, str]:
    return {**cli_env(root), "CLEANROOM_HOST": host}


def test_env_flags_and_file(env: dict[str, str], repo: Path, root: Path) -> None:
    env_file = root / "vars.env"
    env_file.write_text("# comment\n\nFROM_FILE=file value\nOVERRIDDEN=file\nHOST_ONE\n")
    env = {**env, "HOST_ONE": "from-host", "API_KEY": SECRET}
    script = 'echo "$A|$FROM_FILE|$OVERRIDDEN|$HOST_ONE|${UNSET_X-unset}"; test "$API_KEY" = "$K"'
    done = cli(
        "exec", "-e", "A=1", "-e", "OVERRIDDEN=flag", "--env-file", str(env_file),
        "-e", "API_KEY", "-e", f"K={SECRET}", "-e", "UNSET_X", "--json", "--", "sh", "-c", script,
        env=env, cwd=repo,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["stdout"] == "1|file value|flag|from-host|unset\n"
    run_dir = Path(result["run_dir"])
    record = json.loads((run_dir / "run-observability.json").read_text())
    assert record["env"] == ["A", "API_KEY", "FROM_FILE", "HOST_ONE", "K", "OVERRIDDEN"]
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET.encode() not in done.stderr


def test_a_malformed_env_item_is_invalid_request_without_its_value(
    env: dict[str, str], repo: Path
) -> None:
    done = cli("exec", "-e", f"={SECRET}", "--", "true", env=env, cwd=repo)
    assert done.returncode == InvalidRequest.exit_code
    assert b"invalid_request" in done.stderr
    assert SECRET.encode() not in done.stderr


def test_read_env_rules() -> None:
    assert read_env([], []) is None
    assert read_env(["A=x=y", "B", "C"], [], {"B": "b"}) == {"A": "x=y", "B": "b"}
    with pytest.raises(InvalidRequest) as caught:
        read_env([f"={SECRET}"], [])
    assert SECRET not in caught.value.message


def test_stdin_with_i_and_empty_without(env: dict[str, str], repo: Path) -> None:
    piped = cli("exec", "-i", "--", "cat", env=env, cwd=repo, stdin=b"hi\n")
    assert (piped.returncode, piped.stdout) == (0, b"hi\n")
    # Without -i, the command's stdin is empty even though this process has input.
    ignored = cli("exec", "--", "sh", "-c", "cat; echo end", env=env, cwd=repo, stdin=b"hi\n")
    assert (ignored.returncode, ignored.stdout) == (0, b"end\n")


def test_stdin_over_the_cap_is_refused(env: dict[str, str], repo: Path) -> None:
    done = cli("exec", "-i", "--", "cat", env=env, cwd=repo, stdin=b"x" * ((512 << 10) + 1))
    assert done.returncode != 0
    assert b"invalid_request" in done.stderr


def test_diff_and_apply(env: dict[str, str], repo: Path, root: Path) -> None:
    (repo / "f.txt").write_text("one\n")
    patch = root / "out.patch"
    done = cli(
        "exec", "--diff", str(patch), "--apply", "--", "sh", "-c", "echo two >> f.txt; echo n > n",
        env=env, cwd=repo,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"+two" in patch.read_bytes()
    assert (repo / "f.txt").read_text() == "one\ntwo\n"
    assert (repo / "n").read_text() == "n\n"
    assert b"applied the changes" in done.stderr


def test_apply_is_skipped_when_the_command_fails(env: dict[str, str], repo: Path) -> None:
    done = cli("exec", "--apply", "--", "sh", "-c", "echo x > made; exit 3", env=env, cwd=repo)
    assert done.returncode == 3
    assert not (repo / "made").exists()
    assert b"not applying" in done.stderr


def test_apply_conflict_exits_with_its_code_and_leaves_the_host(
    env: dict[str, str], repo: Path
) -> None:
    (repo / "f.txt").write_text("one\n")
    # The command edits the host file itself (the agent-process guest runs on the host),
    # standing in for a user editing it during the run.
    script = f"echo guest >> f.txt; echo host > {repo}/f.txt"
    done = cli("exec", "--apply", "--", "sh", "-c", script, env=env, cwd=repo)
    assert b"workspace_conflict" in done.stderr
    assert done.returncode == 65
    assert (repo / "f.txt").read_text() == "host\n"


def test_artifacts_to_out_dir(env: dict[str, str], repo: Path, root: Path) -> None:
    out = root / "outdir"
    script = "mkdir -p build/x; echo a > build/a.txt; echo b > build/x/b.txt; echo c > c.md"
    done = cli(
        "exec", "--artifact", "build/**", "--artifact", "*.none", "--out", str(out), "--json",
        "--", "sh", "-c", script, env=env, cwd=repo,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert sorted(a["path"] for a in result["artifacts"]) == ["build/a.txt", "build/x/b.txt"]
    assert (out / "build" / "a.txt").read_text() == "a\n"
    assert (out / "build" / "x" / "b.txt").read_text() == "b\n"
    assert not (out / "c.md").exists()
    status = cli("status", "--run-id", result["run_id"], "--json", env=env, cwd=repo)
    record = json.loads(status.stdout)
    assert len(record["workspace_artifacts"]["artifacts"]) == 2


def test_run_in_a_launched_context_takes_env_and_stdin(env: dict[str, str], repo: Path) -> None:
    launched = cli("launch", env=env, cwd=repo)
    cid = launched.stdout.decode().strip()
    try:
        done = cli(
            "run", "-e", "V=from-flag", "-i", cid, "--", "sh", "-c", 'cat; echo "$V"',
            env=env, cwd=repo, stdin=b"piped\n",
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (0, b"piped\nfrom-flag\n"), done.stderr
    finally:
        cli("terminate", cid, env=env, cwd=repo)
