"""Debian packages as build inputs: resolve candidate versions, download, unpack.

Resolution asks ``apt-cache show --no-all-versions`` for the candidate of each
package (name, version, sha256 of the .deb). That costs about a second, so the
answer is cached in a file keyed by the identity (path, size, mtime) of apt's
package lists, sources and preferences: the candidates can only change when
one of those does, so a cached answer is never stale.

Packages are fetched with ``apt-get download`` (never installed) and unpacked
with ``dpkg-deb -x``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.progress import Progress
from cleanroom.images.tools import run_tool

__all__ = [
    "DebPackage",
    "apt_state_key",
    "download_packages",
    "extract_package",
    "resolve_packages",
]

_APT_STATE_PATHS = (
    Path("/var/lib/apt/lists"),
    Path("/etc/apt/sources.list"),
    Path("/etc/apt/sources.list.d"),
    Path("/etc/apt/preferences"),
    Path("/etc/apt/preferences.d"),
    Path("/etc/apt/apt.conf.d"),
    # An installed version can be the candidate, so dpkg's state counts too.
    Path("/var/lib/dpkg/status"),
)


@dataclass(frozen=True)
class DebPackage:
    """One resolved Debian package: the candidate apt would download."""

    name: str
    version: str
    sha256: str
    size: int
    depends: str = ""

    def to_dict(self) -> dict[str, str | int]:
        """The manifest form."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
        }


def apt_state_key() -> list[list[str | int]]:
    """The identity of every file that decides apt's candidates: ``[path, size, mtime_ns]``."""
    key: list[list[str | int]] = []
    for base in _APT_STATE_PATHS:
        paths = sorted(p for p in base.iterdir() if p.is_file()) if base.is_dir() else [base]
        for path in paths:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            key.append([str(path), st.st_size, st.st_mtime_ns])
    return key


def _parse_stanzas(text: str) -> list[dict[str, str]]:
    """Parse deb822 stanzas (continuation lines folded into the previous field)."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last = {}, ""
        elif line[0] in " \t" and last:
            current[last] += "\n" + line.strip()
        elif ":" in line:
            field, _, value = line.partition(":")
            last = field.strip()
            current[last] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _show(names: Sequence[str]) -> list[DebPackage]:
    try:
        proc = run_tool(["apt-cache", "show", "--no-all-versions", *names])
    except ImageUnavailable as exc:
        # apt-cache fails outright when it has no package lists at all.
        raise ImageUnavailable(
            f"apt-cache knows none of {', '.join(names)}: {exc.message}",
            details={"missing_packages": list(names), "hint": "run apt-get update"},
        ) from exc
    found: dict[str, DebPackage] = {}
    for stanza in _parse_stanzas(proc.stdout.decode(errors="replace")):
        name = stanza.get("Package", "")
        if name in names and name not in found:
            try:
                found[name] = DebPackage(
                    name=name,
                    version=stanza["Version"],
                    sha256=stanza["SHA256"],
                    size=int(stanza["Size"]),
                    depends=stanza.get("Depends", ""),
                )
            except (KeyError, ValueError) as exc:
                raise ImageUnavailable(f"apt-cache show {name}: malformed record") from exc
    missing = [n for n in names if n not in found]
    if missing:
        raise ImageUnavailable(
            f"apt has no candidate for {', '.join(missing)}",
            details={"missing_packages": missing, "hint": "run apt-get update"},
        )
    return [found[n] for n in names]


def _kernel_package(meta: DebPackage) -> str:
    """The ``linux-image-<ver>-cloud-amd64`` package the metapackage depends on."""
    for alternative in re.split(r"[,|]", meta.depends):
        name = alternative.strip().split(" ", 1)[0]
        if name.startswith("linux-image-") and name != meta.name:
            return name
    raise ImageUnavailable(f"{meta.name} {meta.version} depends on no linux-image package")


def _resolve_uncached(kernel_meta: str, names: Sequence[str]) -> list[DebPackage]:
    first = _show([kernel_meta, *names])
    kernel = _show([_kernel_package(first[0])])
    return [first[0], kernel[0], *first[1:]]


def resolve_packages(
    kernel_meta: str, names: Sequence[str], *, cache_file: Path | None = None
) -> list[DebPackage]:
    """Resolve ``[kernel metapackage, kernel image, *names]`` to apt's candidates.

    With ``cache_file`` the answer is reused while apt's state is unchanged.
    Raises ImageUnavailable if a package has no candidate (apt-get update may help).
    """
    request = [kernel_meta, *names]
    state = apt_state_key()
    if cache_file is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            cached = json.loads(cache_file.read_text())
            if cached["request"] == request and cached["state"] == state:
                return [DebPackage(**p) for p in cached["packages"]]
    packages = _resolve_uncached(kernel_meta, names)
    if cache_file is not None:
        record = {
            "request": request,
            "state": state,
            "packages": [{**p.to_dict(), "depends": p.depends} for p in packages],
        }
        # Best effort: a cache that cannot be written only costs time.
        with contextlib.suppress(OSError):
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(cache_file)
    return packages


def _deb_path(dest: Path, package: DebPackage) -> Path:
    matches = sorted(dest.glob(f"{package.name}_*.deb"))
    if len(matches) != 1:
        raise ImageUnavailable(f"apt-get download left no single .deb for {package.name} in {dest}")
    return matches[0]


def download_packages(
    packages: Iterable[DebPackage], dest: Path, progress: Progress, step: str
) -> dict[str, Path]:
    """Download each package's exact version into ``dest``; returns name -> .deb path.

    If the download fails (e.g. stale or missing package lists), runs
    ``apt-get update`` once, says so through ``progress``, and retries.
    """
    pkgs = list(packages)
    argv = ["apt-get", "download", "-q"]
    if os.geteuid() == 0:
        # apt drops to the _apt user for downloads, which cannot write a private temp dir.
        argv += ["-o", "APT::Sandbox::User=root"]
    argv += [f"{p.name}={p.version}" for p in pkgs]
    try:
        run_tool(argv, cwd=dest)
    except ImageUnavailable as first:
        progress.info(
            f"apt-get download failed ({first.message.splitlines()[0][:200]}); "
            "running apt-get update and retrying"
        )
        run_tool(["apt-get", "update", "-q"])
        run_tool(argv, cwd=dest)
    out: dict[str, Path] = {}
    total = sum(p.size for p in pkgs)
    done = 0
    for package in pkgs:
        path = _deb_path(dest, package)
        if path.stat().st_size != package.size:
            raise ImageUnavailable(
                f"{path.name}: size {path.stat().st_size} differs from apt's {package.size}"
            )
        out[package.name] = path
        done += package.size
        progress.advance(step, done, total, "bytes")
    return out


def extract_package(deb: Path, dest: Path) -> None:
    """Unpack the files of ``deb`` into ``dest`` (no maintainer scripts run)."""
    run_tool(["dpkg-deb", "-x", deb, dest])
