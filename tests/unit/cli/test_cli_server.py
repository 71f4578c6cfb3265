"""The server-facing CLI commands, run as real processes against a real server (fake service)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_run import ENTRY, cli, cli_env

from cleanroom.service import Service
from cleanroom.testing import runs_with_status


@pytest.fixture
def env(root: Path) -> dict[str, str]:
    return cli_env(root)


def test_exec_streams_bytes_and_exits_with_the_code(
    host: str, repo: Path, env: dict[str, str]
) -> None:
    code = (
        "import sys; sys.stdout.buffer.write(b'bin\\xff\\n'); sys.stdout.flush(); "
        "sys.stderr.write('to stderr\\n'); sys.exit(7)"
    )
    done = cli("exec", "--host", host, "-c", str(repo), "--", sys.executable, "-c", code, env=env)
    assert done.returncode == 7
    assert done.stdout == b"bin\xff\n"
    assert done.stderr == b"to stderr\n"


def test_exec_single_argument_runs_under_a_shell(
    host: str, repo: Path, env: dict[str, str]
) -> None:
    env = {**env, "CLEANROOM_HOST": host}
    done = cli("exec", "--", "echo $((40 + 2)) | tr 4 x", env=env, cwd=repo)
    assert (done.returncode, done.stdout) == (0, b"x2\n")


def test_exec_json(host: str, repo: Path, env: dict[str, str]) -> None:
    done = cli(
        "exec",
        "--host",
        host,
        "-c",
        str(repo),
        "--json",
        "--",
        "sh",
        "-c",
        "echo hi; exit 3",
        env=env,
    )
    assert done.returncode == 3
    result = json.loads(done.stdout)
    assert result["stdout"] == "hi\n"
    assert result["exit_code"] == 3
    assert result["run_id"].startswith("run-")


def test_exec_errors(host: str, repo: Path, root: Path, env: dict[str, str]) -> None:
    done = cli("exec", "--host", host, "-c", str(root), "--", "true", env=env)
    assert done.returncode == 66
    assert done.stderr.decode().startswith("error[policy_not_found]: ")

    done = cli("exec", "--host", host, "-c", str(root), "--json", "--", "true", env=env)
    assert done.returncode == 66
    assert json.loads(done.stdout)["error"]["code"] == "policy_not_found"

    done = cli(
        "exec", "--host", host, "-c", str(repo), "--timeout", "0.5", "--", "sleep 30", env=env
    )
    assert done.returncode == 124
    err = done.stderr.decode()
    assert "error[run_timeout]" in err
    assert "cleanroom status --run-id run-" in err


def test_exec_without_a_server(env: dict[str, str], repo: Path) -> None:
    done = cli("exec", "--no-autostart", "-c", str(repo), "--", "true", env=env)
    assert done.returncode == 69
    assert done.stderr.decode().startswith("error[server_unavailable]: no cleanroom server")


def test_ctrl_c_cancels_the_run(
    host: str, repo: Path, env: dict[str, str], service: Service
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ENTRY,
            "exec",
            "--host",
            host,
            "-c",
            str(repo),
            "--",
            "echo ready; sleep 60",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert b"cancelling run run-" in err
    deadline = time.monotonic() + 15
    while len(runs_with_status("cancelled")) != 1 or service.list_cleanrooms():
        assert time.monotonic() < deadline, "the run was not cancelled and its context ended"
        time.sleep(0.05)


def json_cli(*args: str, env: dict[str, str]) -> Any:
    done = cli(*args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_launch_run_ls_status_terminate(host: str, repo: Path, env: dict[str, str]) -> None:
    env = {**env, "CLEANROOM_HOST": host}
    launched = json_cli("launch", "-c", str(repo), env=env)
    cid = launched["cleanroom_id"]
    assert launched["policy_source"] == str(repo / "cleanroom.yaml")

    plain = cli("launch", "-c", str(repo), env=env)
    assert plain.stdout.decode().strip().startswith("cr-")

    streamed = cli("run", cid, "--", "sh", "-c", "echo streamed; exit 4", env=env)
    assert (streamed.returncode, streamed.stdout) == (4, b"streamed\n")
    result = json.loads(cli("run", cid, "--json", "--", "echo hi", env=env).stdout)
    assert result["stdout"] == "hi\n"

    listed = json_cli("ls", env=env)["cleanrooms"]
    assert cid in [c["cleanroom_id"] for c in listed]
    assert cli("ls", env=env).stdout.decode().count("cr-") == 2

    record = json_cli("status", "--run-id", result["run_id"], env=env)
    assert record["run_id"] == result["run_id"]
    table = cli("status", "--run-id", result["run_id"], env=env)
    assert table.returncode == 0
    assert "timings" in table.stdout.decode()
    assert "vm_ready" in table.stdout.decode()  # a phase of the real run record
    missing = cli("status", "--run-id", "run-nope", env=env)
    assert missing.returncode == 66
    assert missing.stderr.decode().startswith("error[run_not_found]")

    assert json_cli("terminate", cid, env=env) == {"terminated": True}
    unknown = cli("terminate", "cr-never", env=env)
    assert unknown.returncode == 66


def test_doctor(host: str, repo: Path, env: dict[str, str]) -> None:
    (repo / "cleanroom.yaml").write_text("version: 1\n")  # valid for the real policy loader
    done = cli("doctor", "--host", host, "-c", str(repo), env=env)
    assert done.returncode == 0, done.stdout
    out = done.stdout.decode()
    assert "pass  server:" in out
    assert "warn  backend.firecracker:" in out  # the service's own checks follow
    report = json.loads(cli("doctor", "--host", host, "-c", str(repo), "--json", env=env).stdout)
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]][:2] == ["server", "policy"]

    (repo / "cleanroom.yaml").write_text("version: 1\nallow: 12\n")
    broken = cli("doctor", "--host", host, "-c", str(repo), "--json", env=env)
    assert broken.returncode == 1
    policy = [c for c in json.loads(broken.stdout)["checks"] if c["name"] == "policy"]
    assert policy[0]["status"] == "fail"


def test_doctor_without_server(root: Path, env: dict[str, str]) -> None:
    explicit = cli("doctor", "--host", f"unix://{root}/none.sock", "--json", env=env)
    assert explicit.returncode == 1
    assert json.loads(explicit.stdout)["checks"][0]["status"] == "fail"
    default = cli("doctor", "--json", env=env)  # nothing configured: exec would start one
    assert json.loads(default.stdout)["checks"][0]["status"] == "warn"


def test_serve_refuses_remote_tcp_without_flag(env: dict[str, str]) -> None:
    done = cli("serve", "--listen", "tcp://0.0.0.0:0", env=env)
    assert done.returncode == 64
    assert "--allow-remote" in done.stderr.decode()


# What `cleanroom exec` must not load: its start-up is part of every run's latency.
EXEC_MUST_NOT_IMPORT = (
    "fastapi",
    "uvicorn",
    "starlette",
    "rich",
    "cleanroom.images",
    "cleanroom.policy",
    "cleanroom.server",
    "httpx",
    "pydantic",
    "typer",
)


def test_exec_imports_only_what_it_needs(host: str, repo: Path, env: dict[str, str]) -> None:
    probe = (
        "import sys\n"
        "from cleanroom.cli.app import main\n"
        f"sys.argv = ['cleanroom', 'exec', '--host', {host!r}, '-c', {str(repo)!r}, '--', 'true']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print(code, sorted(m for m in {EXEC_MUST_NOT_IMPORT!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.stdout.decode().split("\n")[0] == "0 []", done.stderr


def test_help_lists_every_command(env: dict[str, str]) -> None:
    done = cli("--help", env=env)
    assert done.returncode == 0
    listed = done.stdout.decode()
    for command in (
        "exec",
        "doctor",
        "serve",
        "launch",
        "run",
        "terminate",
        "ls",
        "status",
        "policy",
        "image",
    ):
        assert f"\n    {command} " in listed or f"\n    {command}\n" in listed, command
    assert cli(env=env).returncode == 2  # no command: the help, as a usage error
    version = cli("--version", env=env)
    assert (version.returncode, version.stdout) == (0, b"cleanroom 0.1.0\n")


def test_usage_errors_exit_2(env: dict[str, str], repo: Path) -> None:
    missing = cli("exec", "--host", "unix:///nonexistent", env=env)
    assert missing.returncode == 2
    assert b"missing the command" in missing.stderr
    assert cli("status", env=env).returncode == 2  # --run-id is required
    assert cli("image", "prune", "--keep", "-1", env=env).returncode == 2
    assert cli("frobnicate", env=env).returncode == 2


def test_exec_takes_options_after_the_command_as_the_commands(
    host: str, repo: Path, env: dict[str, str]
) -> None:
    done = cli("exec", "--host", host, "-c", str(repo), "echo", "--json", "-c", env=env)
    assert (done.returncode, done.stdout) == (0, b"--json -c\n")


def test_help_mentions_loopback(env: dict[str, str]) -> None:
    started = time.monotonic()
    done = cli("serve", "--help", env=env)
    assert done.returncode == 0
    assert "loopback" in done.stdout.decode()
    assert started  # the help text, not its speed, is what this checks
