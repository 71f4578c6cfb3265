"""Workspace disks on real guests (QEMU under TCG here): a sparse file arrives whole
but takes only its data on the host, an allocated size over the cap is refused, and
a guest filling its workspace disk gets ENOSPC while the host file stays within
``resources.disk_mib``."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from cleanroom.config import LimitsConfig, QemuConfig, RuntimeConfig
from cleanroom.errors import WorkspaceTooLarge
from cleanroom.images import ensure_image
from cleanroom.service import LaunchOptions, RunOptions, RunResult, Service
from cleanroom.service.staging import STAGING_DIR_ENV

pytestmark = [pytest.mark.vm, pytest.mark.image]

SPARSE_SIZE = 10 << 30
DATA_AT = 5 << 30
MIB = 1 << 20


def _allocated(root: Path, pattern: str) -> int:
    total = 0
    for path in root.rglob(pattern):
        try:
            st = path.lstat()
        except OSError:  # removed meanwhile
            continue
        if path.is_file():
            total += st.st_blocks * 512
    return total


async def _peak_usage(roots: list[tuple[Path, str]], done: asyncio.Event) -> int:
    """The largest host disk use seen under ``roots`` until ``done``."""
    peak = 0
    while not done.is_set():
        peak = max(peak, sum(_allocated(root, pat) for root, pat in roots))
        await asyncio.sleep(0.05)
    return peak


def _service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: LimitsConfig) -> Service:
    # A state directory of its own: a service's start repairs and prunes it.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    stage = tmp_path / "stage"
    stage.mkdir()
    monkeypatch.setenv(STAGING_DIR_ENV, str(stage))
    config = RuntimeConfig(
        qemu=QemuConfig(accel="tcg", launch_seconds=120),
        limits=limits,
        run_dir_roots=(tmp_path / "runs",),
    )
    return Service(config)


def _repo(tmp_path: Path, policy: str = "version: 1\n") -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cleanroom.yaml").write_text(policy)
    return repo


async def _exec_watched(
    svc: Service, repo: Path, argv: list[str], watched: list[tuple[Path, str]]
) -> tuple[RunResult, int]:
    """Start ``svc``, exec ``argv`` in ``repo`` (runs in its sibling ``runs/``), close it;
    the result and the peak host disk use under ``watched`` meanwhile."""
    runs = repo.parent / "runs"
    await svc.start()
    done = asyncio.Event()
    watch = asyncio.ensure_future(_peak_usage(watched, done))
    try:
        result = await svc.exec(
            repo, argv, RunOptions(timeout=300), options=LaunchOptions(run_dir=runs)
        )
    finally:
        done.set()
        peak = await watch
        await svc.close()
    return result, peak


async def test_a_sparse_file_stays_sparse_on_the_host_and_arrives_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path)
    data = os.urandom(MIB)
    with (repo / "big.img").open("wb") as fh:
        fh.truncate(SPARSE_SIZE)
        fh.seek(DATA_AT)
        fh.write(data)
    svc = _service(tmp_path, monkeypatch, LimitsConfig(workspace_bytes=64 * MIB))
    read = (
        f"import hashlib, os; f = open('big.img', 'rb'); f.seek({DATA_AT}); "
        f"print(os.fstat(f.fileno()).st_size, hashlib.sha256(f.read({MIB})).hexdigest())"
    )
    watched = [(tmp_path / "runs", "workspace*"), (tmp_path / "stage", "*")]
    result, peak = await _exec_watched(svc, repo, ["python3", "-c", read], watched)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [str(SPARSE_SIZE), hashlib.sha256(data).hexdigest()]
    # The staged copy and the 16 GiB disk together: ext4 metadata and the 1 MiB.
    assert 0 < peak < 32 * MIB


async def test_an_allocated_size_over_the_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path)
    with (repo / "big.img").open("wb") as fh:
        fh.truncate(SPARSE_SIZE)
        fh.write(os.urandom(2 * MIB))
    svc = _service(tmp_path, monkeypatch, LimitsConfig(workspace_bytes=MIB))
    await svc.start()
    try:
        with pytest.raises(WorkspaceTooLarge) as caught:
            await svc.exec(repo, ["true"], options=LaunchOptions(run_dir=tmp_path / "runs"))
    finally:
        await svc.close()
    assert caught.value.code == "workspace_too_large"
    assert caught.value.details["limit"] == "workspace_bytes"


async def test_filling_the_workspace_disk_gives_enospc_within_disk_mib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_mib = 96
    repo = _repo(tmp_path, f"version: 1\nsandbox:\n  resources:\n    disk_mib: {disk_mib}\n")
    svc = _service(tmp_path, monkeypatch, LimitsConfig())
    dd = ["sh", "-c", "dd if=/dev/zero of=/workspace/f bs=1M; echo rc=$?"]
    result, peak = await _exec_watched(svc, repo, dd, [(tmp_path / "runs", "workspace.ext4")])
    assert "No space left" in result.stderr
    assert "rc=1" in result.stdout
    assert disk_mib * MIB // 2 < peak <= disk_mib * MIB


async def test_filling_the_root_disk_gives_enospc_within_the_image_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path)
    svc = _service(tmp_path, monkeypatch, LimitsConfig())
    base = ensure_image().rootfs.stat().st_size
    dd = ["sh", "-c", "dd if=/dev/zero of=/fill bs=1M; echo rc=$?"]
    result, peak = await _exec_watched(svc, repo, dd, [(tmp_path / "runs", "rootfs*")])
    assert "No space left" in result.stderr
    assert "rc=1" in result.stdout
    # The run's copy of the root (a qcow2 overlay or a sparse copy) holds at most
    # the image's own size, whatever the guest writes.
    assert 0 < peak <= base + 16 * MIB
