"""Apt for a Debian suite: the host's own, or another one from the host's sources.

The host's release uses the host's apt as it is. Another suite (``trixie`` on
a ``bookworm`` host) gets a private apt state under the user image cache: the
host's sources files with the host's codename replaced by the suite's
(``bookworm-security`` becomes ``trixie-security``; sources without it are kept
as they are), and package lists fetched with ``apt-get update`` into a private
directory, refreshed when older than a day. The same sources files are what
mmdebstrap builds from.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.debian import apt_state_key
from cleanroom.images.tools import run_tool

__all__ = ["AptSuite", "apt_for_suite", "host_suite", "sources_files"]

_MAX_LIST_AGE = 24 * 3600.0


def host_suite() -> str:
    """The host's Debian codename (``VERSION_CODENAME`` in ``/etc/os-release``)."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                value = line.partition("=")[2].strip().strip('"')
                if value:
                    return value
    raise ImageUnavailable("cannot tell the host's Debian release (no VERSION_CODENAME)")


def sources_files() -> list[Path]:
    """The host's apt sources files (one-line ``.list`` and deb822 ``.sources``)."""
    found: list[Path] = []
    main = Path("/etc/apt/sources.list")
    if main.is_file() and main.read_text().strip():
        found.append(main)
    directory = Path("/etc/apt/sources.list.d")
    if directory.is_dir():
        found += sorted(
            p for p in directory.iterdir() if p.suffix in (".list", ".sources") and p.is_file()
        )
    if not found:
        raise ImageUnavailable("the host has no apt sources configured")
    return found


@dataclass(frozen=True)
class AptSuite:
    """How to run apt for one suite."""

    suite: str
    options: tuple[str, ...]
    """``-o`` options for apt-get/apt-cache (empty: the host's apt as it is)."""
    sources: tuple[Path, ...]
    """Sources files for mmdebstrap."""
    state: tuple[tuple[str, int, int], ...]
    """The identity of the files that decide apt's answers (resolutions are cached by it)."""


def _rewrite(text: str, host: str, suite: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            lines.append(line)
            continue
        tokens = line.split(" ")
        for index, token in enumerate(tokens):
            if token == host or token.startswith(f"{host}-"):
                tokens[index] = suite + token[len(host) :]
        lines.append(" ".join(tokens))
    return "\n".join(lines) + "\n"


def _identity(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out: list[tuple[str, int, int]] = []
    for path in paths:
        with contextlib.suppress(OSError):
            st = path.stat()
            out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


def apt_for_suite(suite: str, cache_root: Path) -> AptSuite:
    """Apt for ``suite``; another suite than the host's is prepared under ``cache_root``.

    Raises ImageUnavailable (``cause`` ``not_found``) if the archive has no such suite.
    """
    host = host_suite()
    if suite == host:
        host_state = tuple((str(p), int(s), int(m)) for p, s, m in apt_state_key())
        return AptSuite(suite, (), tuple(sources_files()), host_state)
    base = cache_root / ".apt" / suite
    parts, lists, cache = base / "sources", base / "lists", base / "cache"
    try:
        for directory in (parts, lists / "partial", cache):
            directory.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for index, source in enumerate(sources_files()):
            target = parts / f"{index:02d}-{source.name}"
            text = _rewrite(source.read_text(), host, suite)
            if not target.exists() or target.read_text() != text:
                target.write_text(text)
            written.append(target)
    except OSError as exc:
        raise ImageUnavailable(f"cannot prepare apt for {suite}: {exc.strerror or exc}") from exc
    options = (
        "-o", "Dir::Etc::SourceList=/dev/null",
        "-o", f"Dir::Etc::SourceParts={parts}",
        "-o", f"Dir::State::Lists={lists}",
        "-o", f"Dir::Cache={cache}",
        "-o", "Dir::State::status=/dev/null",
    )  # fmt: skip
    fetched = [p for p in lists.iterdir() if p.is_file() and p.name != "lock"]
    newest = max((p.stat().st_mtime for p in fetched), default=0.0)
    if not fetched or time.time() - newest > _MAX_LIST_AGE:
        try:
            run_tool(["apt-get", "-q", *options, "update", "-o", "APT::Update::Error-Mode=any"])
        except ImageUnavailable as exc:
            raise ImageUnavailable(
                f"cannot fetch the package lists of Debian suite {suite!r}",
                details={"cause": "not_found", "suite": suite, "apt": exc.message[-1500:]},
            ) from exc
        fetched = [p for p in lists.iterdir() if p.is_file() and p.name != "lock"]
    state = _identity(sorted(written) + sorted(fetched))
    return AptSuite(suite, options, tuple(written), state)
