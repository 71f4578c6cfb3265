"""Applying workspace changes to the host: result, conflicts, symlinks, incomplete sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_harness import AgentFactory
from workspace_trees import RUN_SCRIPT, run_script, snapshot, started

from cleanroom.changes import FileLimits, apply_changes, collect_changes
from cleanroom.errors import InvalidRequest, WorkspaceConflict


async def test_apply_makes_the_host_match_the_guest(agents: AgentFactory, tmp_path: Path) -> None:
    agent, src, manifest = await started(agents, tmp_path)
    await run_script(agent, RUN_SCRIPT)
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    result = apply_changes(cs, src, manifest)
    assert snapshot(src) == snapshot(agent.workspace)
    assert (result.written, result.removed, result.chmodded) == (8, 4, 2)
    assert not list(src.rglob("*.cleanroom-*"))  # no temporary file left behind


async def test_apply_refuses_a_conflict_and_leaves_the_host_untouched(
    agents: AgentFactory, tmp_path: Path
) -> None:
    agent, src, manifest = await started(agents, tmp_path)
    await run_script(agent, RUN_SCRIPT)
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    (src / "pkg" / "mod.py").write_text("x = 'edited on the host meanwhile'\n")
    (src / "new").mkdir()  # also added on the host: a second conflict
    before = snapshot(src)
    with pytest.raises(WorkspaceConflict) as err:
        apply_changes(cs, src, manifest)
    assert err.value.code == "workspace_conflict"
    assert err.value.status == 409
    assert err.value.details["paths"] == ["new", "pkg/mod.py"]
    assert snapshot(src) == before
    # An unrelated host edit is no conflict.
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "new").rmdir()
    (src / "keep.txt").write_text("host edit of a file the run left alone\n")
    apply_changes(cs, src, manifest)
    assert (src / "keep.txt").read_text() == "host edit of a file the run left alone\n"
    assert (src / "pkg" / "mod.py").read_text() == "x = 2\n"


async def test_apply_never_follows_a_host_symlink(agents: AgentFactory, tmp_path: Path) -> None:
    agent, src, manifest = await started(agents, tmp_path)
    await run_script(agent, "printf new > new/f 2>/dev/null || (mkdir new && printf new > new/f)")
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    outside = tmp_path / "outside"
    outside.mkdir()
    (src / "new").symlink_to(outside)  # planted after the copy
    with pytest.raises(WorkspaceConflict):
        apply_changes(cs, src, manifest)
    assert list(outside.iterdir()) == []


async def test_an_incomplete_change_set_is_not_applied(
    agents: AgentFactory, tmp_path: Path
) -> None:
    agent, src, manifest = await started(agents, tmp_path)
    await run_script(agent, "head -c 3000 /dev/zero > big")
    limits = FileLimits(max_file_bytes=1000)
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest, limits)
    before = snapshot(src)
    with pytest.raises(InvalidRequest):
        apply_changes(cs, src, manifest)
    assert snapshot(src) == before


async def test_a_symlink_leaving_the_workspace_is_not_applied(
    agents: AgentFactory, tmp_path: Path
) -> None:
    agent, src, manifest = await started(agents, tmp_path)
    await run_script(agent, "ln -s /etc/passwd abs; ln -s ../../x up")
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    with pytest.raises(InvalidRequest, match="outside"):
        apply_changes(cs, src, manifest)
    assert not (src / "abs").is_symlink()


async def test_setuid_bits_never_reach_the_host(agents: AgentFactory, tmp_path: Path) -> None:
    agent, src, manifest = await started(agents, tmp_path)
    await run_script(agent, "chmod 4755 pkg/deep/script.sh; printf x > s; chmod 6755 s")
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    apply_changes(cs, src, manifest)
    assert (src / "pkg/deep/script.sh").stat().st_mode & 0o7777 == 0o755
    assert (src / "s").stat().st_mode & 0o7777 == 0o755
