"""``cleanroom exec -it`` through a real pseudo-terminal (pexpect), against a real server
whose guests are agent processes (each command gets a real pty from the agent)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from cli_run import ENTRY, cli_env
from shared_server import shared_host  # noqa: F401 - the tests share one server


@pytest.fixture
def env(root: Path, host: str) -> dict[str, str]:
    return {**cli_env(root), "CLEANROOM_HOST": host, "PS1": "guest$ "}


def _spawn(command: str, env: dict[str, str], cwd: Path) -> pexpect.spawn[bytes]:
    return pexpect.spawn(
        "/bin/sh", ["-c", command], env=env, cwd=str(cwd), timeout=60, dimensions=(24, 80)
    )


def test_typing_window_size_ctrl_c_exit_code_and_restored_terminal(
    env: dict[str, str], repo: Path
) -> None:
    cli = f"{sys.executable} -c '{ENTRY}'"
    # After the run, the host shell prints its terminal settings and the exit status.
    script = f"{cli} exec -it -e PS1 -- sh -i; echo status=$?; stty -a"
    child = _spawn(script, env, repo)
    try:
        child.expect_exact("guest$ ")
        child.sendline("stty size")
        child.expect_exact("24 80")
        child.expect_exact("guest$ ")
        # The window follows the host terminal (SIGWINCH to the CLI, resize to the guest).
        child.setwinsize(40, 120)
        child.sendline("stty size")
        child.expect_exact("40 120")
        child.expect_exact("guest$ ")
        child.sendline("echo typed-$((6 * 7))")
        child.expect_exact("typed-42")
        child.expect_exact("guest$ ")
        # Ctrl-C interrupts the foreground job, not the shell (else: a 60 s timeout).
        child.sendline("sleep 600; echo not-interrupted")
        child.expect_exact("sleep 600")
        child.sendintr()
        child.expect_exact("guest$ ")
        child.sendline("exit 7")
        child.expect_exact("status=7")
        # The host terminal is back in cooked mode with echo.
        child.expect(r"\bicanon\b")
        settings = str(child.before) + str(child.after) + child.read().decode()
        assert " -icanon" not in settings
        assert " echo " in settings or settings.split()[0] == "echo"
    finally:
        child.close(force=True)
    assert "not-interrupted" not in settings


def test_t_without_a_terminal_is_refused(env: dict[str, str], repo: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", ENTRY, "exec", "-it", "--", "true"],
        env=env, cwd=repo, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 64
    assert b"needs a terminal" in done.stderr
