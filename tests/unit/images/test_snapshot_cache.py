"""The snapshot cache: keys, atomic publication, verification before use, pruning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cleanroom.images.snapshots import (
    SNAPSHOT_MANIFEST_NAME,
    SnapshotCache,
    SnapshotInvalid,
    snapshot_key,
)

FACTS: dict[str, str | int | bool | None] = {
    "image_digest": "ab" * 32,
    "memory_mib": 256,
    "devices": "-M microvm",
}


def _publish(cache: SnapshotCache, key: str, data: bytes = b"stream" * 1000) -> None:
    with cache.staging() as staging:
        (staging / "memory.mig").write_bytes(data)
        (staging / "rootfs.raw").write_bytes(b"disk")
        cache.publish(staging, key, FACTS, ("memory.mig", "rootfs.raw"))


def test_key_changes_with_every_fact() -> None:
    base = snapshot_key(FACTS)
    assert snapshot_key(dict(reversed(list(FACTS.items())))) == base
    changes: tuple[tuple[str, str | int], ...] = (
        ("memory_mib", 512),
        ("devices", "-M q35"),
        ("image_digest", "cd"),
    )
    for name, other in changes:
        assert snapshot_key({**FACTS, name: other}) != base
    assert snapshot_key({**FACTS, "agent_version": "0.2.1"}) != base


def test_publish_find_and_prune(tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path / "snaps")
    with pytest.raises(SnapshotInvalid, match="no snapshot"):
        cache.find("k1")
    _publish(cache, "k1")
    snap = SnapshotCache(tmp_path / "snaps").find("k1")  # a fresh process hashes once
    assert snap.facts == FACTS
    assert snap.bytes == 6004
    assert snap.file("memory.mig").read_bytes().startswith(b"stream")
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["k1"]  # no staging left
    _publish(cache, "k2")
    assert cache.prune(keep="k2") == ["k1"]
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["k2"]
    _publish(cache, "k3")
    _publish(cache, "k4")
    assert cache.prune(keep=["k3", "k4"]) == ["k2"]
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["k3", "k4"]


def test_a_changed_file_is_hashed_again_and_refused(tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path)
    _publish(cache, "k")
    memory = tmp_path / "k" / "memory.mig"
    cache.find("k")
    st = memory.stat()
    with memory.open("r+b") as fh:  # same size, other content, same mtime restored
        fh.write(b"X")
    os.utime(memory, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    with pytest.raises(SnapshotInvalid, match="does not match its sha256"):
        cache.find("k")
    memory.write_bytes(b"short")
    with pytest.raises(SnapshotInvalid, match="wrong size"):
        cache.find("k")
    memory.unlink()
    with pytest.raises(SnapshotInvalid, match="missing"):
        cache.find("k")


def test_unchanged_files_are_not_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = SnapshotCache(tmp_path)
    _publish(cache, "k")
    cache.find("k")

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"hashed {path} again")

    monkeypatch.setattr("cleanroom.images.snapshots.file_sha256", no_hashing)
    assert cache.find("k").key == "k"


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        json.dumps({"format": 1}),
        json.dumps({"format": 1, "key": "other", "created_at": "", "facts": {}, "files": {}}),
        json.dumps(
            {
                "format": 1,
                "key": "k",
                "created_at": "",
                "facts": {},
                "files": {"../x": {"size": 1, "sha256": ""}},
            }
        ),
        json.dumps(
            {"format": 1, "key": "k", "created_at": "", "facts": {}, "files": {}, "extra": 1}
        ),
    ],
)
def test_malformed_manifests_are_refused(tmp_path: Path, doc: str) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / SNAPSHOT_MANIFEST_NAME).write_text(doc)
    with pytest.raises(SnapshotInvalid):
        SnapshotCache(tmp_path).find("k")


def test_pruning_leaves_other_servers_recent_snapshots_and_live_staging(tmp_path: Path) -> None:
    """Two servers with other shapes share a cache: publishing one key keeps the
    most recently used others (up to ``most``) and a live process's staging."""
    cache = SnapshotCache(tmp_path)
    for n, key in enumerate(("old", "mid", "new")):
        _publish(cache, key)
        os.utime(tmp_path / key / SNAPSHOT_MANIFEST_NAME, (1000 + n, 1000 + n))
    cache.find("old")  # a use makes it the most recent
    live = tmp_path / f".tmp-{os.getpid()}-abc"  # being made by a live process
    live.mkdir()
    dead = tmp_path / ".tmp-999999999-abc"  # its maker is gone (no such pid)
    dead.mkdir()
    legacy = tmp_path / ".tmp-xyz"  # no pid: left alone for a day
    legacy.mkdir()
    _publish(cache, "mine")
    assert cache.prune("mine", most=3) == ["mid"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([".tmp-xyz", live.name, "mine", "new", "old"])
    os.utime(legacy, (0, 0))
    assert cache.prune("mine", most=1) == ["new", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "mine"])
