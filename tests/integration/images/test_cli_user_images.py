"""CLI tests of ``cleanroom image pull|import|ls|rm|prune`` on user images (real registry)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from images_fixtures import PushedImages
from ocitools import free_port, run

from cleanroom.cli.testing import invoke


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.strip().splitlines()]


def test_pull_json_progress_then_cache_hit(oci_images: PushedImages, image_cache: Path) -> None:
    ref = oci_images.refs["bb"]
    result = invoke(["image", "pull", ref, "--json"])
    assert result.exit_code == 0, result.output
    events = _lines(result.stdout)
    steps = [e["step"] for e in events if e["event"] == "finish"]
    assert steps == ["resolve", "pull", "unpack", "ext4"]
    assert any(e["event"] == "advance" and e["step"] == "pull" for e in events)
    final = events[-1]
    assert final["event"] == "image"
    digest = ref.partition("@")[2]
    assert final["image"]["key"] == digest
    assert final["image"]["ref"] == ref
    assert final["image"]["config"]["user"] == "1000:1000"
    again = invoke(["image", "pull", ref])
    assert again.exit_code == 0, again.output
    assert f"image {digest[7:19]} is cached" in again.stderr
    assert f"digest: {digest}" in again.stdout


def test_pull_refuses_unpinned_and_reports_unreachable(image_cache: Path) -> None:
    result = invoke(["image", "pull", "busybox:latest", "--json"])
    assert result.exit_code == 65
    error = _lines(result.stdout)[-1]["error"]
    assert error["code"] == "policy_invalid"
    assert "not pinned by digest" in error["message"]
    result = invoke(["image", "pull", f"127.0.0.1:{free_port()}/a/b@sha256:{'3' * 64}", "--json"])
    assert result.exit_code == 69
    error = _lines(result.stdout)[-1]["error"]
    assert error["code"] == "image_unavailable"
    assert error["details"]["cause"] == "unreachable"


def test_import_ls_rm_prune(oci_images: PushedImages, image_cache: Path, tmp_path: Path) -> None:
    archive = tmp_path / "saved.tar"
    run("skopeo", "copy", "--quiet", f"oci:{oci_images.layout}:bb", f"docker-archive:{archive}")
    result = invoke(["image", "import", str(archive), "--name", "mine"])
    assert result.exit_code == 0, result.output
    ref_line = next(line for line in result.stdout.splitlines() if line.startswith("ref: "))
    key = ref_line.removeprefix("ref: ")
    assert key.startswith("sha256:")
    assert f"      ref: {key}" in result.stdout
    assert "imported import:mine" in result.stdout
    pulled = invoke(["image", "pull", oci_images.refs["bb"], "--json"])
    assert pulled.exit_code == 0, pulled.output

    listed = invoke(["image", "ls", "--json"])
    assert listed.exit_code == 0, listed.output
    user = _lines(listed.stdout)[-1]["user_images"]
    assert {u["source"] for u in user} == {"import:mine", oci_images.refs["bb"]}
    assert all(u["size_bytes"] > 0 and u["last_used"].endswith("Z") for u in user)
    text = invoke(["image", "ls"])
    assert "import:mine" in text.stdout
    assert key[7:19] in text.stdout

    # Guest snapshots of an image live in its entry and go with it (made for real
    # by the snapshot VM tests; here their layout is enough).
    snapshots = {}
    for entry_key in (key, oci_images.refs["bb"].partition("@")[2]):
        snapshots[entry_key] = image_cache / entry_key[7:] / "snapshots" / ("ab" * 32)
        snapshots[entry_key].mkdir(parents=True)
        (snapshots[entry_key] / "snapshot.json").write_text("{}")
    assert invoke(["image", "rm", "zzzz"]).exit_code == 69
    removed = invoke(["image", "rm", key[7:15], "--json"])
    assert removed.exit_code == 0, removed.output
    assert _lines(removed.stdout)[-1] == {"removed": [key]}
    assert not snapshots[key].exists()
    # A run's policy naming the removed import now fails cleanly.
    assert invoke(["image", "pull", key]).exit_code == 69

    kept = invoke(["image", "prune", "--unused", "30", "--json"])
    assert _lines(kept.stdout)[-1] == {"removed": [], "removed_user": []}
    pruned = invoke(["image", "prune", "--unused", "0", "--json"])
    assert _lines(pruned.stdout)[-1]["removed_user"] == [oci_images.refs["bb"].partition("@")[2]]
    assert not snapshots[oci_images.refs["bb"].partition("@")[2]].exists()
    assert _lines(invoke(["image", "ls", "--json"]).stdout)[-1]["user_images"] == []


def test_import_hostile_tarball_reports_cause(image_cache: Path, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../../escape")
        tar.addfile(info)
    result = invoke(["image", "import", str(archive), "--json"])
    assert result.exit_code == 69
    error = _lines(result.stdout)[-1]["error"]
    assert error["details"]["cause"] == "hostile_archive"


def test_prepare_pulls_the_policy_image(
    oci_images: PushedImages, image_cache: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cleanroom.yaml").write_text("version: 1\n")
    result = invoke(["image", "prepare", str(repo), "--json"])
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout)[-1] == {"event": "image", "image": None}
    ref = oci_images.refs["bb"]
    (repo / "cleanroom.yaml").write_text(f"version: 1\nsandbox:\n  image:\n    ref: {ref}\n")
    result = invoke(["image", "prepare", str(repo), "--json"])
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout)[-1]["image"]["key"] == ref.partition("@")[2]
    (repo / "cleanroom.yaml").write_text("version: 1\nsandbox:\n  image:\n    ref: busybox\n")
    result = invoke(["image", "prepare", str(repo)])
    assert result.exit_code == 65
    assert "policy_invalid" in result.stderr
