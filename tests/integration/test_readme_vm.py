"""The README's curl example runs verbatim against a real server (real guests)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CLI = str(Path(sys.executable).with_name("cleanroom"))


def _block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"no sh block after {heading}"
    return match.group(1)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    (tmp_path / "run").mkdir(mode=0o700)
    (tmp_path / "config" / "cleanroom").mkdir(parents=True)
    (tmp_path / "config" / "cleanroom" / "config.yaml").write_text(
        "backends: {qemu: {accel: tcg}}\n"
    )
    proc = subprocess.Popen(
        [CLI, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    sock = tmp_path / "run" / "cleanroom" / "cleanroom.sock"
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, "server exited"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert not sock.exists()


@pytest.mark.vm
@pytest.mark.image
def test_curl_example_runs_verbatim(server: dict[str, str]) -> None:
    script = _block_after("## HTTP API")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        check=False,
        cwd=ROOT,
        env=server,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    run, terminated = (json.loads(line) for line in done.stdout.splitlines())
    assert run["exit_code"] == 0
    assert run["stdout"].startswith("Linux 6.")
    assert run["run_id"].startswith("run-")
    assert Path(run["run_dir"], "run-observability.json").is_file()
    assert terminated == {"terminated": True}
