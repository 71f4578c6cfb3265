"""Accelerator choice: KVM only on a passing canary verdict, cached per host/QEMU/image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleanroom.backends.qemu.accel import AccelVerdict, VerdictCache, resolve_accel, verdict_key
from cleanroom.errors import BackendUnavailable, ConfigInvalid


class CountingCanary:
    """A canary double for this layer; the real one boots a guest (see the VM tests)."""

    def __init__(self, result: tuple[bool, str]) -> None:
        self.result = result
        self.calls = 0

    async def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.result


async def _resolve(
    requested: str, canary: CountingCanary, cache: VerdictCache, identity: str | None = "6.1|kvm"
) -> tuple[str, AccelVerdict | None]:
    return await resolve_accel(
        requested,
        qemu_version="7.2.22",
        image_digest="abc",
        canary=canary,
        cache=cache,
        kvm_identity=lambda: identity,
    )


async def test_auto_failing_canary_gives_tcg_and_is_cached(tmp_path: Path) -> None:
    cache = VerdictCache(tmp_path / "v.json")
    canary = CountingCanary((False, "KVM internal error"))
    accel, verdict = await _resolve("auto", canary, cache)
    assert accel == "tcg"
    assert verdict is not None
    assert not verdict.kvm_works
    accel, verdict = await _resolve("auto", canary, VerdictCache(tmp_path / "v.json"))
    assert accel == "tcg"
    assert canary.calls == 1
    stored = json.loads((tmp_path / "v.json").read_text())
    key = verdict_key("6.1|kvm", "7.2.22", "abc")
    assert stored[key]["kvm_works"] is False
    assert stored[key]["reason"] == "KVM internal error"


async def test_auto_passing_canary_gives_kvm(tmp_path: Path) -> None:
    canary = CountingCanary((True, "agent ready"))
    accel, _ = await _resolve("auto", canary, VerdictCache(tmp_path / "v.json"))
    assert accel == "kvm"


async def test_verdict_is_per_image_and_host(tmp_path: Path) -> None:
    cache = VerdictCache(tmp_path / "v.json")
    canary = CountingCanary((True, "ok"))
    await _resolve("auto", canary, cache)
    await _resolve("auto", canary, cache, identity="6.2|kvm")
    assert canary.calls == 2
    await resolve_accel(
        "auto",
        qemu_version="7.2.22",
        image_digest="other",
        canary=canary,
        cache=cache,
        kvm_identity=lambda: "6.1|kvm",
    )
    assert canary.calls == 3


async def test_no_kvm_device_means_tcg_without_canary(tmp_path: Path) -> None:
    canary = CountingCanary((True, "ok"))
    accel, verdict = await _resolve("auto", canary, VerdictCache(tmp_path / "v.json"), None)
    assert (accel, verdict, canary.calls) == ("tcg", None, 0)


async def test_explicit_choices(tmp_path: Path) -> None:
    canary = CountingCanary((False, "no"))
    cache = VerdictCache(tmp_path / "v.json")
    assert (await _resolve("tcg", canary, cache))[0] == "tcg"
    assert (await _resolve("kvm", canary, cache))[0] == "kvm"
    assert canary.calls == 0
    with pytest.raises(BackendUnavailable):
        await _resolve("kvm", canary, cache, None)
    with pytest.raises(ConfigInvalid):
        await _resolve("hvf", canary, cache)


def test_corrupt_cache_is_ignored_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "v.json"
    path.parent.mkdir()
    path.write_text("{not json")
    cache = VerdictCache(path)
    assert cache.get("k") is None
    verdict = AccelVerdict(key="k", kvm_works=True, reason="r", checked_at="t")
    cache.put(verdict)
    assert cache.get("k") == verdict
    path.write_text(json.dumps({"k": {"kvm_works": "yes", "reason": 1}}))
    assert cache.get("k") is None
    assert [p.name for p in path.parent.iterdir()] == ["v.json"]  # no temp files left
