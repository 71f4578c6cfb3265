"""Workspace trees for the changes tests: a source tree, a run that changes it, snapshots."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

from agent_harness import Agent, AgentFactory, Output

from cleanroom.changes import HostManifest, take_manifest


def tar_of(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(root, arcname=".")
    return buf.getvalue()


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """path -> (kind, permission bits, content or link target)."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", 0, os.fsencode(path.readlink()))
        elif path.is_dir():
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


def build_source(src: Path) -> None:
    (src / "pkg" / "deep").mkdir(parents=True)
    (src / "gone-dir" / "inner").mkdir(parents=True)
    (src / "README").write_text("hello\n")
    (src / "keep.txt").write_text("unchanged\n")
    (src / "touched.txt").write_text("same content\n")
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "pkg" / "blob.bin").write_bytes(bytes(range(256)) * 64)
    (src / "pkg" / "deep" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "gone-dir" / "inner" / "f").write_text("bye\n")
    (src / "delete-me").write_text("x\n")
    (src / "link").symlink_to("README")
    (src / "link-retarget").symlink_to("README")


# The run: one of every kind of change, done by a real command in the workspace.
RUN_SCRIPT = r"""
set -e
printf 'x = 2\n' > pkg/mod.py
printf 'same content\n' > touched.txt
head -c 5000 /dev/urandom > pkg/blob.bin
printf '\0\1\2binary new' > added.bin
mkdir -p new/dir && printf 'fresh\n' > new/dir/file.txt
chmod 755 pkg/deep/script.sh
rm -rf gone-dir delete-me
ln -s pkg/mod.py new-link
ln -sfn keep.txt link-retarget
chmod 700 pkg
"""


async def run_script(agent: Agent, script: str) -> None:
    out = Output()
    status = await agent.client.exec(["sh", "-c", script], cwd=str(agent.workspace), on_output=out)
    assert status.exit_code == 0, bytes(out.stderr)


async def started(
    agents: AgentFactory, tmp_path: Path, **kw: object
) -> tuple[Agent, Path, HostManifest]:
    src = tmp_path / "src"
    src.mkdir()
    build_source(src)
    manifest = take_manifest(src)
    agent = await agents.start(**kw)  # type: ignore[arg-type]
    await agent.client.send_workspace([tar_of(src)], read_only=False)
    return agent, src, manifest
