"""Workspace changes through the real guest agent: detection, patch, apply, caps, conflicts."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from agent_harness import Agent, AgentFactory, Output
from workspace_trees import RUN_SCRIPT, build_source, run_script, snapshot, started, tar_of

from cleanroom.agent import AgentRemoteError
from cleanroom.agent import changes as guest_changes
from cleanroom.changes import (
    ChangeSet,
    FileLimits,
    HostManifest,
    collect_changes,
    manifest_from_archive,
    render_patch,
    take_manifest,
)
from cleanroom.errors import InvalidRequest

UNSHARE = shutil.which("unshare")


async def test_every_kind_of_change_is_reported(agents: AgentFactory, tmp_path: Path) -> None:
    agent, _, manifest = await started(agents, tmp_path)
    await run_script(agent, RUN_SCRIPT)
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    got = {c.path: (c.change, c.type) for c in cs.changes}
    assert got == {
        "added.bin": ("added", "file"),
        "delete-me": ("deleted", "file"),
        "gone-dir": ("deleted", "dir"),
        "gone-dir/inner": ("deleted", "dir"),
        "gone-dir/inner/f": ("deleted", "file"),
        "link-retarget": ("modified", "symlink"),
        "new": ("added", "dir"),
        "new-link": ("added", "symlink"),
        "new/dir": ("added", "dir"),
        "new/dir/file.txt": ("added", "file"),
        "pkg": ("mode_changed", "dir"),
        "pkg/blob.bin": ("modified", "file"),
        "pkg/deep/script.sh": ("mode_changed", "file"),
        "pkg/mod.py": ("modified", "file"),
    }
    by_path = {c.path: c for c in cs.changes}
    assert by_path["new-link"].target == "pkg/mod.py"
    assert by_path["link-retarget"].target == "keep.txt"
    assert by_path["pkg"].mode == 0o700
    mod = by_path["pkg/mod.py"]
    assert mod.blob is not None
    assert mod.blob.read_bytes() == b"x = 2\n"
    blob = by_path["pkg/blob.bin"].blob
    assert blob is not None
    assert blob.read_bytes() == (agent.workspace / "pkg/blob.bin").read_bytes()
    assert cs.complete
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    summary = cs.summary(max_paths=3)
    assert (summary.added, summary.modified, summary.deleted, summary.mode_changed) == (5, 3, 4, 2)
    assert summary.paths == (
        ("added", "added.bin"),
        ("deleted", "delete-me"),
        ("deleted", "gone-dir"),
    )
    assert summary.paths_truncated
    assert summary.to_dict()["caps_hit"] == []


async def test_no_change_reports_nothing(agents: AgentFactory, tmp_path: Path) -> None:
    agent, _, manifest = await started(agents, tmp_path)
    # Rewritten with the same bytes, chmod-ed and back, read: no change.
    await run_script(agent, "cat README >/dev/null; cp keep.txt k && mv k keep.txt; "
               "chmod 600 README; chmod 644 README")  # fmt: skip
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    assert cs.changes == ()
    assert cs.complete


async def test_patch_is_git_format_and_binary_safe(agents: AgentFactory, tmp_path: Path) -> None:
    agent, src, manifest = await started(agents, tmp_path)
    await run_script(agent, RUN_SCRIPT)
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    patch = render_patch(cs, src, manifest)
    assert b"diff --git a/pkg/mod.py b/pkg/mod.py" in patch
    assert b"GIT binary patch" in patch
    assert b"old mode 100644\nnew mode 100755" in patch
    assert b"deleted file mode 100644" in patch
    assert str(tmp_path).encode() not in patch  # no host paths leak into it
    # git apply on a fresh copy of the original gives the guest's tree (dirs aside).
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, symlinks=True)
    subprocess.run(["git", "apply", "--binary", "-"], cwd=copy, input=patch, check=True)
    expected = {k: v for k, v in snapshot(agent.workspace).items() if v[0] != "dir"}
    assert {k: v for k, v in snapshot(copy).items() if v[0] != "dir"} == expected


async def test_caps_are_reported_and_block_the_patch(agents: AgentFactory, tmp_path: Path) -> None:
    agent, src, manifest = await started(agents, tmp_path)
    await run_script(
        agent, "head -c 3000 /dev/zero > big; for i in 1 2 3 4; do echo $i > f$i; done"
    )
    limits = FileLimits(max_files=100, max_file_bytes=1000, max_total_bytes=4)
    cs = await collect_changes(agent.client, tmp_path / "s1", manifest, limits)
    skipped = {c.path: c.skipped for c in cs.changes if c.skipped}
    assert skipped == {"big": "too_large", "f3": "total_bytes", "f4": "total_bytes"}
    assert set(cs.caps_hit) == {"max_file_bytes", "max_total_bytes"}
    assert not cs.complete
    with pytest.raises(InvalidRequest):
        render_patch(cs, src, manifest)
    cs = await collect_changes(agent.client, tmp_path / "s2", manifest, FileLimits(max_files=2))
    assert [c.path for c in cs.changes] == ["big", "f1"]
    assert cs.caps_hit == ("max_files",)


async def test_special_files_are_skipped(agents: AgentFactory, tmp_path: Path) -> None:
    agent, _, manifest = await started(agents, tmp_path)
    await run_script(agent, "mkfifo pipe")
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    (change,) = cs.changes
    assert (change.path, change.type, change.skipped, change.blob) == (
        "pipe", "special", "special", None,
    )  # fmt: skip


async def test_changes_without_a_workspace_fail(agent: Agent, tmp_path: Path) -> None:
    with pytest.raises(AgentRemoteError) as err:
        await collect_changes(agent.client, tmp_path / "spool", HostManifest({}))
    assert err.value.remote_code == "changes_failed"
    assert not (tmp_path / "spool").exists()
    # The session goes on.
    assert (await agent.client.exec(["true"], cwd="/", on_output=Output())).exit_code == 0


async def test_baseline_of_a_seeded_workspace(agents: AgentFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_source(src)
    manifest = take_manifest(src)
    ws = tmp_path / "seeded"
    shutil.copytree(src, ws, symlinks=True)  # as a host-made workspace disk would hold it
    agent = await agents.start(workspace=ws)
    stats = await agent.client.baseline()
    assert stats.files == 8
    await run_script(agent, "printf 'same content\\n' > touched.txt; echo more >> README")
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    # touched.txt came back (the guest had no hash for it) and was dropped on the host.
    assert [(c.path, c.change) for c in cs.changes] == [("README", "modified")]


def test_the_manifest_round_trips_through_json(tmp_path: Path) -> None:
    build_source(tmp_path)
    manifest = take_manifest(tmp_path)
    assert HostManifest.from_json(manifest.to_json()) == manifest
    assert manifest.entries["link"].target == "README"
    assert manifest.entries["pkg/blob.bin"].size == 256 * 64
    with pytest.raises(InvalidRequest):
        HostManifest.from_json('{"x": [1]}')


def test_the_manifest_hashes_sparse_files_without_reading_holes(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    with (tmp_path / "sparse.img").open("wb") as fh:
        fh.truncate(64 << 20)
        fh.seek(10 << 20)
        fh.write(data)
    (tmp_path / "tail-hole").write_bytes(b"x")
    with (tmp_path / "tail-hole").open("r+b") as fh:
        fh.truncate(3 << 20)
    manifest = take_manifest(tmp_path)
    for name in ("sparse.img", "tail-hole"):
        content = (tmp_path / name).read_bytes()
        entry = manifest.entries[name]
        assert (entry.size, entry.sha256) == (len(content), hashlib.sha256(content).hexdigest())


@pytest.mark.skipif(
    os.geteuid() != 0 or UNSHARE is None, reason="needs root and unshare(1) for a mount namespace"
)
async def test_read_only_workspace_reports_no_changes(agents: AgentFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_source(src)
    assert UNSHARE is not None
    agent = await agents.start(prefix=[UNSHARE, "--mount", "--propagation", "private"])
    await agent.client.send_workspace([tar_of(src)], read_only=True)
    cs = await collect_changes(agent.client, tmp_path / "spool", take_manifest(src))
    assert cs == ChangeSet(())


async def test_a_same_size_rewrite_with_the_old_mtime_is_seen(
    agents: AgentFactory, tmp_path: Path
) -> None:
    # Right after the copy, same length, mtime put back: only ctime (and the
    # manifest's wait for its tick to pass) can tell.
    agent, _, manifest = await started(agents, tmp_path)
    script = "printf 'x = 9\\n' > pkg/mod.py; touch -r keep.txt pkg/mod.py"
    await run_script(agent, script)
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    assert [(c.path, c.change) for c in cs.changes] == [("pkg/mod.py", "modified")]


async def test_a_second_transfer_replaces_the_manifest(
    agents: AgentFactory, tmp_path: Path
) -> None:
    agent, src, _ = await started(agents, tmp_path)
    await run_script(agent, "echo more >> README")
    (src / "README").write_text("v2\n")
    manifest = take_manifest(src)
    await agent.client.send_workspace([tar_of(src)], read_only=False)
    cs = await collect_changes(agent.client, tmp_path / "spool", manifest)
    assert cs.changes == ()


def test_the_archive_manifest_equals_the_tree_manifest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_source(src)
    os.link(src / "README", src / "hard")
    (src / "pkg" / "deep" / "script.sh").chmod(0o4755)  # setuid: the guest drops it
    archive = tmp_path / "ws.tar"
    archive.write_bytes(tar_of(src))
    from_tar = manifest_from_archive(archive)
    assert from_tar == take_manifest(src)
    assert from_tar.entries["pkg/deep/script.sh"].mode == 0o755
    assert from_tar.entries["hard"] == from_tar.entries["README"]
    with pytest.raises(InvalidRequest):
        manifest_from_archive(tmp_path / "missing.tar")


def test_the_guest_never_reads_through_a_symlinked_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not yours")
    ws = tmp_path / "ws"
    (ws / "real").mkdir(parents=True)
    (ws / "real" / "f").write_text("ok")
    (ws / "sneaky").symlink_to(outside)
    assert set(guest_changes.walk(str(ws))) == {"real", "real/f", "sneaky"}
    fd = guest_changes.open_in(str(ws), "real/f")
    os.close(fd)
    with pytest.raises(OSError, match=r"Not a directory|Too many levels"):
        guest_changes.open_in(str(ws), "sneaky/secret")


def test_the_manifest_never_waits_for_the_timestamp_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tree written just now: its ctimes are racy, which compare handles by content.
    (tmp_path / "fresh").write_text("just written\n")

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"record_manifest slept {seconds} s")

    monkeypatch.setattr("time.sleep", no_sleep)
    digest = hashlib.sha256(b"just written\n").hexdigest()
    manifest = guest_changes.record_manifest(str(tmp_path), {"fresh": digest})
    assert manifest.racy(manifest.entries["fresh"])
    assert manifest.entries["fresh"].sha256 == digest


def test_a_baseline_waits_for_the_tick_and_has_no_racy_files(tmp_path: Path) -> None:
    # Its ctimes may come from another clock and there is no content to compare.
    (tmp_path / "fresh").write_text("just written\n")
    manifest = guest_changes.record_manifest(str(tmp_path))
    entry = manifest.entries["fresh"]
    assert manifest.taken_ns is None
    assert not manifest.racy(entry)
    assert time.time_ns() >= entry.ident[3] + guest_changes.RACY_MARGIN_NS


def test_a_racily_clean_file_is_compared_by_content(tmp_path: Path) -> None:
    # The identity is as recorded; only the content can tell a same-tick rewrite.
    (tmp_path / "f").write_text("now\n")
    found = guest_changes.walk(str(tmp_path))
    entry = found["f"]
    recorded = guest_changes.Entry(
        entry.type, entry.mode, entry.size, entry.ident, hashlib.sha256(b"was\n").hexdigest()
    )
    ctime = entry.ident[3]
    racy = guest_changes.Manifest({"f": recorded}, taken_ns=ctime)
    settled = guest_changes.Manifest({"f": recorded}, taken_ns=ctime + guest_changes.RACY_MARGIN_NS)
    assert racy.racy(recorded)
    assert not settled.racy(recorded)
    changed = guest_changes.compare(str(tmp_path), racy)
    assert [(c.path, c.change) for c in changed] == [("f", "modified")]
    assert changed[0].sha256 == hashlib.sha256(b"now\n").hexdigest()
    # Past the margin an unchanged identity is trusted (the file is not read).
    assert guest_changes.compare(str(tmp_path), settled) == []
    # Racy with the right hash: read, found equal, not reported.
    same = guest_changes.Entry(
        entry.type, entry.mode, entry.size, entry.ident, hashlib.sha256(b"now\n").hexdigest()
    )
    assert guest_changes.compare(str(tmp_path), guest_changes.Manifest({"f": same}, ctime)) == []
