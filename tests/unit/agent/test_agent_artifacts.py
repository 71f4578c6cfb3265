"""Artifacts through the real guest agent: globs, caps, safe writes on the host."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from agent_harness import Agent, Output

from cleanroom.agent.files import glob_match
from cleanroom.changes import Artifact, FileLimits, collect_artifacts
from cleanroom.errors import GuestAgentFailed, InvalidRequest

SETUP = r"""
set -e
mkdir -p reports/unit reports/e2e dist
printf '<xml/>' > reports/unit/a.xml
printf '<xml>b</xml>' > reports/e2e/b.xml
printf 'not a report' > reports/notes.txt
head -c 100000 /dev/urandom > dist/app.bin
chmod 755 dist/app.bin
ln -s /etc/passwd reports/evil.xml
mkfifo reports/pipe.xml
printf top > top.xml
"""


async def _ready(agent: Agent) -> None:
    agent.workspace.mkdir(exist_ok=True)
    out = Output()
    status = await agent.client.exec(["sh", "-c", SETUP], cwd=str(agent.workspace), on_output=out)
    assert status.exit_code == 0, bytes(out.stderr)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_matching_regular_files_come_back(agent: Agent, tmp_path: Path) -> None:
    await _ready(agent)
    dest = tmp_path / "run" / "artifacts"
    got = await collect_artifacts(agent.client, ["reports/**/*.xml", "dist/*"], dest)
    ws = agent.workspace
    assert got.artifacts == (
        Artifact("dist/app.bin", 100000, _sha(ws / "dist/app.bin")),
        Artifact("reports/e2e/b.xml", 12, _sha(ws / "reports/e2e/b.xml")),
        Artifact("reports/unit/a.xml", 6, _sha(ws / "reports/unit/a.xml")),
    )
    # Symlinks and fifos are never sent; the files are byte-identical.
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "dist/app.bin",
        "reports/e2e/b.xml",
        "reports/unit/a.xml",
    ]
    assert (dest / "dist/app.bin").read_bytes() == (ws / "dist/app.bin").read_bytes()
    assert os.stat(dest / "dist/app.bin").st_mode & 0o777 == 0o755  # noqa: PTH116
    assert os.stat(dest / "reports/unit/a.xml").st_mode & 0o777 == 0o644  # noqa: PTH116
    assert got.caps_hit == ()
    assert got.to_dict()["artifacts"][0]["path"] == "dist/app.bin"


async def test_a_glob_matching_nothing_is_an_empty_list(agent: Agent, tmp_path: Path) -> None:
    await _ready(agent)
    got = await collect_artifacts(agent.client, ["nothing/*.xml"], tmp_path / "a")
    assert (got.artifacts, got.skipped, got.caps_hit) == ((), (), ())


async def test_caps_are_reported(agent: Agent, tmp_path: Path) -> None:
    await _ready(agent)
    limits = FileLimits(max_files=10, max_file_bytes=50_000, max_total_bytes=10)
    got = await collect_artifacts(agent.client, ["**/*.xml", "dist/*"], tmp_path / "a", limits)
    assert [a.path for a in got.artifacts] == ["reports/unit/a.xml", "top.xml"]  # 6 + 3 bytes
    assert got.skipped == (("dist/app.bin", "too_large"), ("reports/e2e/b.xml", "total_bytes"))
    assert set(got.caps_hit) == {"max_file_bytes", "max_total_bytes"}
    got = await collect_artifacts(
        agent.client, ["**/*.xml"], tmp_path / "b", FileLimits(max_files=1)
    )
    assert [a.path for a in got.artifacts] == ["reports/e2e/b.xml"]
    assert got.caps_hit == ("max_files",)


async def test_nothing_is_overwritten_on_the_host(agent: Agent, tmp_path: Path) -> None:
    await _ready(agent)
    dest = tmp_path / "a"
    (dest / "reports" / "unit").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "reports" / "e2e").symlink_to(outside)  # a symlink where a directory goes
    (dest / "top.xml").write_text("host file")
    with pytest.raises(GuestAgentFailed):
        await collect_artifacts(agent.client, ["reports/e2e/*.xml"], dest)
    assert list(outside.iterdir()) == []
    with pytest.raises(GuestAgentFailed):
        await collect_artifacts(agent.client, ["top.xml"], dest)
    assert (dest / "top.xml").read_text() == "host file"
    # The session is still usable.
    got = await collect_artifacts(agent.client, ["reports/unit/*"], tmp_path / "fresh")
    assert [a.path for a in got.artifacts] == ["reports/unit/a.xml"]


@pytest.mark.parametrize("pattern", ["/etc/*", "../*", "a/../b", "", "a//b"])
async def test_bad_patterns_are_invalid_requests(
    agent: Agent, tmp_path: Path, pattern: str
) -> None:
    with pytest.raises(InvalidRequest):
        await collect_artifacts(agent.client, [pattern], tmp_path / "a")


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.xml", "a.xml", True),
        ("*.xml", "d/a.xml", False),
        ("**/*.xml", "a.xml", True),
        ("**/*.xml", "d/e/a.xml", True),
        ("d/**", "d/e/f", True),
        ("d/**", "d", True),
        ("d/*/f", "d/e/f", True),
        ("d/*/f", "d/e/g/f", False),
        ("?.txt", "ab.txt", False),
        ("[ab].txt", "b.txt", True),
    ],
)
def test_glob_semantics(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(pattern, path) is expected
