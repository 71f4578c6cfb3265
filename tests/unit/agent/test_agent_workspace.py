"""Workspace transfer through the real guest agent: round trip, hostile archives, read-only."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_harness import DEBIAN_PYTHON, AgentFactory, Output

from cleanroom.agent import AgentRemoteError
from cleanroom.agent.errors import GuestOperationFailed
from cleanroom.agent.workspace import BUFFERED_BYTES, WorkspaceReceiver

UNSHARE = shutil.which("unshare")
needs_mount_ns = pytest.mark.skipif(
    os.geteuid() != 0 or UNSHARE is None, reason="needs root and unshare(1) for a mount namespace"
)
PYTHONS = [sys.executable] + ([str(DEBIAN_PYTHON)] if DEBIAN_PYTHON.exists() else [])


def _pieces(data: bytes, size: int = 7919) -> Iterator[bytes]:
    """Odd-sized pieces, so tar blocks never line up with frames."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _tar_of(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(root, arcname=".")
    return buf.getvalue()


def _snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, permission bits, content or link target)."""
    out: dict[str, tuple[str, int, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st_ = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", 0, str(path.readlink()))
        elif path.is_dir():
            out[rel] = ("dir", stat.S_IMODE(st_.st_mode), "")
        else:
            out[rel] = ("file", stat.S_IMODE(st_.st_mode), path.read_bytes().hex())
    return out


def _build_tree(src: Path) -> None:
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "private").mkdir(mode=0o700)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40)
    (src / "sub" / "deeper" / "c").write_text("")
    script = src / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    secret = src / "private" / "key"
    secret.write_text("k")
    secret.chmod(0o600)
    (src / "link-to-b").symlink_to("sub/b.bin")
    (src / "sub" / "deeper" / "up").symlink_to("../../a.txt")
    (src / "sub" / "dirlink").symlink_to("deeper")
    os.link(src / "a.txt", src / "hard-a")


async def test_workspace_round_trip(agents: AgentFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _build_tree(src)
    agent = await agents.start()
    stats = await agent.client.send_workspace(_pieces(_tar_of(src)), read_only=False)
    assert stats.skipped == 0
    assert stats.files == 6  # a.txt, b.bin, c, run.sh, key, and the hardlink hard-a
    assert stats.bytes == 6 + 256 * 40 + 0 + 19 + 1  # a hardlink adds no bytes
    assert _snapshot(agent.workspace) == _snapshot(src)
    assert (agent.workspace / "hard-a").stat().st_ino == (agent.workspace / "a.txt").stat().st_ino
    out = Output()
    status = await agent.client.exec(["./run.sh"], cwd=str(agent.workspace), on_output=out)
    assert (status.exit_code, bytes(out.stdout)) == (0, b"ran\n")


async def test_workspace_large_file_streams(agents: AgentFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    blob = os.urandom(1 << 20) * 24
    (src / "big").write_bytes(blob)
    agent = await agents.start()
    stats = await agent.client.send_workspace(_pieces(_tar_of(src), 65536), read_only=False)
    assert (stats.files, stats.bytes) == (1, len(blob))
    got = hashlib.sha256((agent.workspace / "big").read_bytes()).hexdigest()
    assert got == hashlib.sha256(blob).hexdigest()


def _names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def _member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _hostile_tar(outside: Path, victim: Path) -> tuple[bytes, int]:
    """A tar full of attacks; returns it and how many members must be skipped."""
    buf = io.BytesIO()
    skipped = 0

    def add(info: tarfile.TarInfo, data: bytes = b"", *, refused: bool) -> None:
        nonlocal skipped
        if info.type == tarfile.REGTYPE:
            info.size = len(data)
        tf.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
        skipped += refused

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        add(_member("good.txt", mode=0o644), b"fine", refused=False)
        add(_member(str(outside / "abs.txt")), b"pwned", refused=True)
        add(_member("../escape.txt"), b"pwned", refused=True)
        add(_member("sub/../../escape2.txt"), b"pwned", refused=True)
        # symlink escaping (absolute), then a file written "through" it
        add(_member("abslink", tarfile.SYMTYPE, linkname=str(outside)), refused=True)
        add(_member("abslink/through.txt"), b"pwned", refused=False)  # lands in a real dir
        # symlink escaping (relative), then a file through it
        add(_member("rellink", tarfile.SYMTYPE, linkname="../outside"), refused=True)
        add(_member("rellink/through.txt"), b"pwned", refused=False)
        # symlink chains: 'deep/up' is the workspace itself (allowed), 'deep/bad' climbs past it
        add(_member("deep", tarfile.DIRTYPE, mode=0o755), refused=False)
        add(_member("deep/up", tarfile.SYMTYPE, linkname=".."), refused=False)
        add(_member("deep/bad", tarfile.SYMTYPE, linkname="up/.."), refused=True)
        # an allowed inner symlink must not be used as a path component
        add(_member("realdir", tarfile.DIRTYPE, mode=0o755), refused=False)
        add(_member("inner", tarfile.SYMTYPE, linkname="realdir"), refused=False)
        add(_member("inner/x.txt"), b"through inner", refused=True)
        # hardlinks to outside
        add(_member("hl-abs", tarfile.LNKTYPE, linkname=str(victim)), refused=True)
        add(_member("hl-rel", tarfile.LNKTYPE, linkname="../outside/victim.txt"), refused=True)
        add(_member("hl-missing", tarfile.LNKTYPE, linkname="nope.txt"), refused=True)
        # special files
        add(_member("null", tarfile.CHRTYPE, devmajor=1, devminor=3), refused=True)
        add(_member("disk", tarfile.BLKTYPE, devmajor=8, devminor=0), refused=True)
        add(_member("fifo", tarfile.FIFOTYPE), refused=True)
        # setuid/setgid bits are neutralised, not refused
        add(_member("suid", mode=0o6755), b"#!/bin/sh\n", refused=False)
        # replacing the good file by a symlink to the victim, then writing through it
        add(_member("good.txt", tarfile.SYMTYPE, linkname=str(victim)), refused=True)
        add(_member("good.txt", mode=0o644), b"rewritten", refused=False)
    return buf.getvalue(), skipped


@pytest.mark.parametrize("python", PYTHONS)
async def test_hostile_archive_never_writes_outside(
    agents: AgentFactory, tmp_path: Path, python: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("original")
    ws = tmp_path / "ws"
    before = _names(tmp_path)
    data, expected_skips = _hostile_tar(outside, victim)

    agent = await agents.start(workspace=ws, python=python)
    stats = await agent.client.send_workspace(_pieces(data), read_only=False)

    assert stats.skipped == expected_skips
    # Nothing outside the workspace changed.
    assert _names(tmp_path) == sorted([*before, "ws"])
    assert _names(outside) == ["victim.txt"]
    assert victim.read_text() == "original"
    assert victim.stat().st_nlink == 1
    # Inside: what was allowed, and only that.
    assert (ws / "good.txt").read_text() == "rewritten"
    assert not (ws / "good.txt").is_symlink()
    assert (ws / "abslink").is_dir()
    assert not (ws / "abslink").is_symlink()
    assert (ws / "rellink" / "through.txt").read_text() == "pwned"
    assert str((ws / "deep" / "up").readlink()) == ".."
    assert not (ws / "deep" / "bad").exists()
    assert not (ws / "deep" / "bad").is_symlink()
    assert list((ws / "realdir").iterdir()) == []
    for name in ("null", "disk", "fifo", "hl-abs", "hl-rel", "hl-missing", "escape.txt"):
        assert not (ws / name).exists()
    assert stat.S_IMODE((ws / "suid").stat().st_mode) == 0o755
    _, stderr = await agent.finish()
    assert "Traceback" not in stderr
    assert "skipped" in stderr


async def test_scratch_transfer_extracts_then_leaves_the_workspace_as_it_was(
    agents: AgentFactory, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _build_tree(src)
    agent = await agents.start()
    agent.workspace.mkdir(parents=True, exist_ok=True)
    (agent.workspace / "kept").write_text("mine")
    before = _snapshot(agent.workspace)
    stats = await agent.client.send_workspace(_pieces(_tar_of(src)), read_only=False, scratch=True)
    assert (stats.files, stats.skipped) == (6, 0)  # really extracted, then removed
    assert _snapshot(agent.workspace) == before
    # A corrupt scratch archive fails like any other and also leaves nothing behind.
    with pytest.raises(AgentRemoteError) as info:
        await agent.client.send_workspace([b"\x01" * 10_000], read_only=False, scratch=True)
    assert info.value.remote_code == "workspace_failed"
    assert _snapshot(agent.workspace) == before
    # A real transfer afterwards is unaffected.
    stats = await agent.client.send_workspace(_pieces(_tar_of(src)), read_only=False)
    assert _snapshot(agent.workspace) == {**before, **_snapshot(src)}


async def test_scratch_transfer_cannot_be_read_only(agents: AgentFactory) -> None:
    agent = await agents.start()
    with pytest.raises(AgentRemoteError) as info:
        await agent.client.send_workspace([bytes(1024)], read_only=True, scratch=True)
    assert info.value.remote_code == "workspace_failed"
    assert "writable" in str(info.value)


async def test_corrupt_archive_is_an_error_and_session_goes_on(agents: AgentFactory) -> None:
    agent = await agents.start()
    with pytest.raises(AgentRemoteError) as info:
        await agent.client.send_workspace([b"\x01" * 10_000], read_only=False)
    assert info.value.remote_code == "workspace_failed"
    out = Output()
    status = await agent.client.exec(["echo", "still here"], cwd="/", on_output=out)
    assert (status.exit_code, bytes(out.stdout)) == (0, b"still here\n")


async def test_read_only_without_mount_rights_is_refused(agents: AgentFactory) -> None:
    src_tar = io.BytesIO()
    with tarfile.open(fileobj=src_tar, mode="w") as tf:
        tf.addfile(_member("f", size=1), io.BytesIO(b"x"))
    agent = await agents.start()
    with pytest.raises(AgentRemoteError) as info:
        await agent.client.send_workspace([src_tar.getvalue()], read_only=True)
    assert info.value.remote_code == "workspace_failed"
    status = await agent.client.exec(["true"], cwd="/", on_output=Output())
    assert status.exit_code == 0


def _host_mounts_mention(path: Path) -> bool:
    return str(path) in Path("/proc/self/mounts").read_text()


WRITE_PROBE = """
import errno, sys
try:
    open(sys.argv[1], "w").write("x")
    print("WROTE")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


@needs_mount_ns
async def test_read_only_workspace_rejects_writes(agents: AgentFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.txt").write_text("readable")
    assert UNSHARE is not None
    agent = await agents.start(prefix=[UNSHARE, "--mount", "--propagation", "private"])
    ws = agent.workspace
    stats = await agent.client.send_workspace([_tar_of(src)], read_only=True)
    assert stats.files == 1
    assert not _host_mounts_mention(ws)  # the bind mount lives in the agent's namespace only

    async def probe(target: str) -> str:
        out = Output()
        status = await agent.client.exec(
            ["python3", "-c", WRITE_PROBE, target], cwd=str(ws), on_output=out
        )
        assert status.exit_code == 0, bytes(out.stderr)
        return bytes(out.stdout).decode().strip()

    assert await probe(str(ws / "new.txt")) == "EROFS"
    assert await probe(str(ws / "data.txt")) == "EROFS"
    out = Output()
    await agent.client.exec(["cat", "data.txt"], cwd=str(ws), on_output=out)
    assert bytes(out.stdout) == b"readable"

    # A later read-write transfer lifts the read-only bind.
    stats = await agent.client.send_workspace([_tar_of(src)], read_only=False)
    assert await probe(str(ws / "new.txt")) == "WROTE"
    status, stderr = await agent.finish()
    assert status == 0
    assert "Traceback" not in stderr


async def test_failing_archive_source_aborts_and_session_goes_on(
    agents: AgentFactory, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(200_000))
    data = _tar_of(src)

    def source() -> Iterator[bytes]:
        yield data[:70_000]
        raise OSError("the archive source broke")

    agent = await agents.start()
    with pytest.raises(OSError, match="source broke"):
        await agent.client.send_workspace(source(), read_only=False)
    # The guest dropped the transfer; a complete one then works.
    stats = await agent.client.send_workspace(_pieces(data), read_only=False)
    assert (stats.files, stats.bytes) == (1, 200_000)
    assert (agent.workspace / "f").read_bytes() == (src / "f").read_bytes()


@pytest.mark.parametrize("size", [10_000, BUFFERED_BYTES + 1])
def test_a_small_archive_is_extracted_at_its_end_a_large_one_while_it_arrives(
    tmp_path: Path, size: int
) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "blob").write_bytes(os.urandom(size))
    (src / "small.txt").write_text("hi\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    receiver = WorkspaceReceiver(str(dest), read_only=False, can_mount=False)
    for piece in _pieces(_tar_of(src), 65536):
        receiver.feed(piece)
    assert receiver.threaded == (size > BUFFERED_BYTES)
    stats = receiver.finish()
    assert stats.files == 2
    assert _snapshot(dest) == _snapshot(src)
    assert (
        receiver.hashes["d/blob"] == hashlib.sha256((src / "d" / "blob").read_bytes()).hexdigest()
    )


@pytest.mark.parametrize("size", [10_000, BUFFERED_BYTES + 1])
def test_a_cancelled_or_corrupt_transfer_fails_cleanly_either_way(
    tmp_path: Path, size: int
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    cancelled = WorkspaceReceiver(str(dest), read_only=False, can_mount=False)
    cancelled.feed(bytes(size))
    cancelled.cancel()  # returns: the extractor (if any) sees the end of the stream
    corrupt = WorkspaceReceiver(str(dest), read_only=False, can_mount=False)
    corrupt.feed(b"\x01" * size)
    with pytest.raises(GuestOperationFailed):
        corrupt.finish()
