"""Debian package lists as user images, built with mmdebstrap.

Resolution: apt, with an empty dpkg status (so nothing counts as installed),
simulates installing the essential set, ``apt`` and the requested packages
from the host's configured sources (for another suite than the host's, from
a private apt state: see :mod:`cleanroom.images.aptsuite`), without recommends. The sorted
``name=version:arch`` list it prints is the *resolved package set*; the image
key is the SHA-256 of that set with the suite and variant, so an image is
rebuilt only when the set changes. Resolutions are cached per apt state (the
identity of apt's lists, sources and preferences) and request.

Build: ``mmdebstrap --variant=apt`` in root mode (maintainer scripts run, so
ca-certificates, alternatives and system users work) into a directory, from
the host's own sources files, then the usual read-only ext4.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.aptsuite import AptSuite, apt_for_suite, host_suite
from cleanroom.images.importer import DEFAULT_PATH
from cleanroom.images.progress import NullProgress, Progress
from cleanroom.images.tools import run_tool
from cleanroom.images.usercache import (
    CachedImage,
    Produced,
    obtain_user_image,
    user_images_dir,
)
from cleanroom.images.userimage import ImageConfig
from cleanroom.policy.image import DebianImage

__all__ = ["build_debian_image", "resolve_debian_packages"]

_VARIANT = "apt"
_INST_RE = re.compile(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)", re.MULTILINE)
_RESOLVED_CACHE = ".debian-resolved.json"
_RESOLVED_LIMIT = 64 << 20
_NO_RECOMMENDS = "APT::Install-Recommends=false"


def _essential(apt: AptSuite) -> list[str]:
    out = run_tool(["apt-cache", *apt.options, "dumpavail"]).stdout.decode(errors="replace")
    names: list[str] = []
    for stanza in out.split("\n\n"):
        if "\nEssential: yes" in stanza and stanza.startswith("Package: "):
            names.append(stanza.split("\n", 1)[0].removeprefix("Package: ").strip())
    return sorted(set(names))


def _simulate(apt: AptSuite, packages: tuple[str, ...]) -> list[str]:
    argv = [
        "apt-get", "-s", "-q", *apt.options, "-o", "Dir::State::status=/dev/null",
        "-o", _NO_RECOMMENDS, "install", "apt", *_essential(apt), *packages,
    ]  # fmt: skip
    try:
        out = run_tool(argv).stdout.decode(errors="replace")
    except ImageUnavailable as exc:
        raise ImageUnavailable(
            "cannot resolve the Debian package list",
            details={"cause": "not_found", "packages": list(packages), "apt": exc.message[-1500:]},
        ) from exc
    resolved = sorted({f"{n}={v}:{a}" for n, v, a in _INST_RE.findall(out)})
    if not resolved:
        raise ImageUnavailable("apt resolved no packages", details={"cause": "tool_failed"})
    return resolved


def resolve_debian_packages(spec: DebianImage) -> tuple[str, list[str]]:
    """The image key and the resolved ``name=version:arch`` set for ``spec``."""
    suite = spec.suite or host_suite()
    apt = apt_for_suite(suite, user_images_dir())
    request: dict[str, object] = {
        "suite": suite,
        "variant": _VARIANT,
        "packages": sorted(set(spec.packages)),
    }
    apt_state = [list(item) for item in apt.state]
    request_text = json.dumps(request, sort_keys=True)
    cache = user_images_dir() / _RESOLVED_CACHE
    known: dict[str, list[str]] = {}
    # The cache is only a shortcut: anything unexpected in it is ignored.
    with contextlib.suppress(OSError, ValueError):
        if cache.stat().st_size <= _RESOLVED_LIMIT:
            data = json.loads(cache.read_text())
            if isinstance(data, dict) and data.get("apt") == apt_state:
                entries = data.get("entries")
                if isinstance(entries, dict):
                    known = {
                        k: v
                        for k, v in entries.items()
                        if isinstance(v, list) and all(isinstance(r, str) for r in v)
                    }
    resolved = known.get(request_text)
    if resolved is None:
        resolved = _simulate(apt, spec.packages)
        known[request_text] = resolved
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"apt": apt_state, "entries": known}))
            tmp.replace(cache)
    return _key(request, resolved), resolved


def _key(request: dict[str, object], resolved: list[str]) -> str:
    text = json.dumps({"request": request, "resolved": resolved}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def build_debian_image(spec: DebianImage, *, progress: Progress | None = None) -> CachedImage:
    """The cached image for ``spec``, built with mmdebstrap if its resolved set is new."""
    progress = progress if progress is not None else NullProgress()
    progress.start("resolve", f"resolving {len(spec.packages)} Debian package(s)")
    key, resolved = resolve_debian_packages(spec)
    progress.finish("resolve", f"{len(resolved)} packages, image {key[7:19]}")
    suite = spec.suite or host_suite()
    label = ",".join(spec.packages) or "base"
    source = f"debian:{suite}:{label}"[:200]

    def produce(work: Path, progress: Progress) -> Produced:
        tree = work / "rootfs"
        progress.start("mmdebstrap", f"installing {len(resolved)} packages")
        argv: list[str | Path] = [
            "mmdebstrap", "--quiet", "--mode=root", "--format=directory",
            f"--variant={_VARIANT}", f"--aptopt={_NO_RECOMMENDS.replace('=', ' ')}",
        ]  # fmt: skip
        if spec.packages:
            argv.append(f"--include={','.join(spec.packages)}")
        argv += [suite, tree, *apt_for_suite(suite, user_images_dir()).sources]
        try:
            run_tool(argv)
        except ImageUnavailable as exc:
            raise ImageUnavailable(
                "mmdebstrap failed", details={"cause": "tool_failed", "error": exc.message[-2000:]}
            ) from exc
        progress.finish("mmdebstrap")
        config = ImageConfig(env=(("PATH", DEFAULT_PATH),))
        origin = {"kind": "debian", "suite": suite, "packages": " ".join(spec.packages)}
        return Produced(key, source, tree, config, origin)

    return obtain_user_image(produce, key=key, progress=progress)
