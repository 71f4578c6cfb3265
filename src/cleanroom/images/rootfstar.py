"""Extract an untrusted root filesystem tarball (as from ``docker export``) safely.

Every member is checked before anything is written, with the same parsed
member list that is then extracted (no second parser to disagree with):

- names are relative, without ``..`` or NUL, and never pass through a symlink;
- only regular files, directories, symlinks, hard links and FIFOs (no device nodes);
- relative symlink targets stay inside the tree (absolute ones are kept: they
  are resolved inside the guest's own root, never on the host);
- hard links name an earlier regular file of the archive;
- a name appears once (no replacing a directory by a symlink halfway through).

Owners and modes are kept as numbers (the host's user names play no part).
Extended attributes are not restored (``docker export`` carries none).
"""

from __future__ import annotations

import contextlib
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path

from cleanroom.errors import ImageUnavailable

__all__ = ["extract_rootfs", "scan_layer"]

_MAX_MEMBERS = 2_000_000


def _hostile(member: str, problem: str) -> ImageUnavailable:
    return ImageUnavailable(
        f"refusing a hostile archive: {problem}",
        details={"cause": "hostile_archive", "member": member[:300], "problem": problem},
    )


@contextlib.contextmanager
def _reading(what: str, verb: str, cause: str | None = None) -> Iterator[None]:
    """Translate what reading the tar ``what`` raises into ImageUnavailable: an unreadable
    archive is ``corrupt_archive``; a failed ``verb`` (an OSError) is ``cause``."""
    try:
        yield
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise ImageUnavailable(
            f"{what} is not a readable tar archive",
            details={"cause": "corrupt_archive", "error": str(exc)[:200]},
        ) from exc
    except OSError as exc:
        raise ImageUnavailable(
            f"cannot {verb} {what}: {exc.strerror or exc}",
            details=None if cause is None else {"cause": cause},
        ) from exc


def _normal(name: str, what: str) -> str:
    if "\0" in name or name.startswith("/"):
        raise _hostile(name, f"{what} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _hostile(name, f"{what} contains '..'")
    return "/".join(parts)


def _check(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    kinds: dict[str, str] = {"": "dir"}
    keep: list[tarfile.TarInfo] = []
    for member in members:
        name = _normal(member.name, "a member name")
        if not name:
            continue  # the root directory entry itself
        parent = posixpath.dirname(name)
        while parent:
            if kinds.get(parent) == "symlink":
                raise _hostile(member.name, "a member is written through a symlink")
            parent = posixpath.dirname(parent)
        if member.ischr() or member.isblk():
            raise _hostile(member.name, "device nodes are not allowed")
        if member.issym():
            kind = "symlink"
            target = member.linkname
            if "\0" in target:
                raise _hostile(member.name, "a symlink target contains NUL")
            if not target.startswith("/"):
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                if resolved == ".." or resolved.startswith("../"):
                    raise _hostile(member.name, "a symlink points out of the tree")
        elif member.islnk():
            kind = "hardlink"
            target = _normal(member.linkname, "a hard link target")
            if kinds.get(target) not in ("file", "hardlink"):
                raise _hostile(member.name, "a hard link does not name an earlier file")
            member.linkname = target
        elif member.isreg():
            kind = "file"
        elif member.isdir():
            kind = "dir"
        elif member.isfifo():
            kind = "fifo"
        else:
            raise _hostile(member.name, "unsupported member type")
        previous = kinds.get(name)
        if previous is not None and not (previous == kind == "dir"):
            raise _hostile(member.name, "a name appears twice")
        kinds[name] = kind
        member.name = name
        keep.append(member)
        if len(keep) > _MAX_MEMBERS:
            raise _hostile(member.name, f"more than {_MAX_MEMBERS} members")
    return keep


def extract_rootfs(archive: Path, tree: Path) -> int:
    """Extract ``archive`` into the new directory ``tree``; the number of entries.

    Raises ImageUnavailable (``cause`` ``hostile_archive`` or ``corrupt_archive``)
    before writing anything if a member is unsafe.
    """
    with _reading(archive.name, "extract", "extract_failed"), tarfile.open(archive) as tar:
        members = _check(tar.getmembers())
        tree.mkdir(mode=0o755)
        # Safe: every member was checked above; owners and modes must be kept.
        tar.extractall(tree, members, numeric_owner=True, filter="fully_trusted")  # noqa: S202
    tree.chmod(0o755)
    return len(members)


def scan_layer(layer: Path) -> None:
    """Refuse an image layer (a tar, optionally compressed) with hostile members.

    Absolute names, ``..``, device nodes and hard links out of the tree are
    refused; symlinks and whiteouts are left to the unpacker, which resolves
    every path inside the image's root. Streams the layer once; writes nothing.
    """
    with _reading(f"layer {layer.name[:12]}", "read"), tarfile.open(layer, mode="r|*") as tar:
        seen = 0
        while True:
            try:
                member = tar.next()
            except tarfile.ReadError:
                if seen == 0:
                    raise
                # Some writers (umoci among them) omit the end-of-archive
                # blocks and the last member's padding: no header can
                # follow, for any reader, so this is the end.
                break
            if member is None:
                break
            seen += 1
            _normal(member.name, "a member name")
            if member.ischr() or member.isblk():
                raise _hostile(member.name, "device nodes are not allowed")
            if member.islnk():
                _normal(member.linkname, "a hard link target")
