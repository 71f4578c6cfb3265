"""User images: pull and build times, and cache-hit times.

Everything goes into a fresh, private image cache (``XDG_CACHE_HOME`` in a
temporary directory), so the first call of each kind is a true miss.

1. pull: OCI images built here with umoci (busybox; busybox plus 64 MiB in
   256 files) pushed to a docker-registry on 127.0.0.1, then pulled by
   ``pull_oci_image``: skopeo copy, umoci unpack, ext4. Then a cache hit.
2. build: a Debian package list (default: git) built with mmdebstrap from the
   host's sources; then a cache hit (the package set is resolved again, from
   the resolution cache).

A ``*_hit`` row is a repeated call in this process; a ``*_hit_cli`` row is a
whole new ``cleanroom image pull REF`` / ``cleanroom image prepare DIR``
process on the same cache (its start-up included), as a new launch sees it.

Usage: ``python bench/images.py [-n N] [--packages git] [--json]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CLI, report, summarize, with_facts

from cleanroom.images import build_debian_image, pull_oci_image
from cleanroom.policy.image import DebianImage, parse_image_ref


def _run(*argv: str | Path) -> bytes:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True).stdout


@contextmanager
def _registry(root: Path) -> Iterator[str]:
    """``docker-registry serve`` on a free 127.0.0.1 port; yields ``host:port``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    host = f"127.0.0.1:{port}"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "store")}},
        "http": {"addr": host},
    }
    root.mkdir(parents=True)
    (root / "config.yml").write_text(json.dumps(config))
    with (root / "registry.log").open("wb") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    urllib.request.urlopen(f"http://{host}/v2/", timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((root / "registry.log").read_text()) from None
                    time.sleep(0.05)
            yield host
        finally:
            proc.terminate()
            proc.wait(10)


def _push_image(work: Path, host: str, tag: str, extra_mib: int) -> str:
    """A busybox image (plus ``extra_mib`` MiB of incompressible files); its pinned ref."""
    layout = work / "layout"
    if not (layout / "oci-layout").exists():
        _run("umoci", "init", "--layout", layout)
    _run("umoci", "new", "--image", f"{layout}:{tag}")
    tree = work / f"tree-{tag}"
    (tree / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", tree / "bin/busybox")
    (tree / "bin/sh").symlink_to("busybox")
    if extra_mib:
        data = tree / "data"
        data.mkdir()
        for i in range(256):
            (data / f"f{i}").write_bytes(os.urandom(extra_mib * 4096))
    _run("umoci", "insert", "--no-history", "--image", f"{layout}:{tag}", tree, "/")
    name = f"{host}/bench/{tag}"
    _run(
        "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
        f"oci:{layout}:{tag}", f"docker://{name}:{tag}",
    )  # fmt: skip
    raw = _run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{name}:{tag}")
    return f"{name}@sha256:{hashlib.sha256(raw).hexdigest()}"


def _cli(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([CLI, *args], check=True, capture_output=True)
    return (time.perf_counter() - t0) * 1000


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="cache-hit iterations")
    ap.add_argument("--packages", default="git", help="the Debian packages to build")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
        with _registry(tmp / "registry") as host:
            for tag, extra in (("small", 0), ("large", 64)):
                ref = parse_image_ref(_push_image(tmp, host, tag, extra))
                cached = None

                def pull(ref: Any = ref) -> None:
                    nonlocal cached
                    cached = pull_oci_image(ref)

                rows[f"pull_{tag}"] = [_timed(pull)]
                rows[f"pull_{tag}_hit"] = [_timed(pull) for _ in range(args.n)]
                rows[f"pull_{tag}_hit_cli"] = [
                    _cli("image", "pull", str(ref)) for _ in range(args.n)
                ]
                assert cached is not None
                sizes[f"pull_{tag}"] = cached.content_bytes
        spec = DebianImage(None, tuple(sorted(set(args.packages.split(",")))))
        rows["build_debian"] = [_timed(lambda: build_debian_image(spec))]
        rows["build_debian_hit"] = [_timed(lambda: build_debian_image(spec)) for _ in range(args.n)]
        repo = tmp / "repo"
        repo.mkdir()
        (repo / "cleanroom.yaml").write_text(
            "version: 1\nsandbox:\n  image:\n    debian:\n"
            f"      packages: [{', '.join(spec.packages)}]\n"
        )
        rows["build_debian_hit_cli"] = [_cli("image", "prepare", str(repo)) for _ in range(args.n)]
        sizes["build_debian"] = build_debian_image(spec).content_bytes
    stats = {k: summarize(v) for k, v in rows.items()}
    summary = {
        "ms": {k: v["median"] for k, v in stats.items()},
        "content_bytes": sizes,
        "packages": args.packages,
    }
    out = with_facts(summary, runs=args.n, stats=stats)
    report(
        out,
        as_json=args.json,
        title="user images: first use and cache hits",
        rows=list(stats.items()),
        footer=f"\ncontent bytes {sizes}   host {out['host']}",
    )


if __name__ == "__main__":
    main()
