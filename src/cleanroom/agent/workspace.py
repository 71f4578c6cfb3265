"""Receiving the workspace: a streamed tar archive extracted safely into one directory.

Stdlib only: this module runs inside the guest.

The archive is never held whole: chunks are written into a pipe that an
extractor thread reads with ``tarfile`` in stream mode (``r|*``), so memory is
bounded by the pipe and one member buffer, and a slow disk slows the channel.

Hostile members are **skipped and counted** (``WorkspaceStats.skipped``, each
one logged), never written outside the destination:

* absolute names, names with a ``..`` component, names whose parent path runs
  through a symlink or a non-directory;
* symlinks with an absolute target, or whose target climbs (leading ``..``)
  above the destination, or that use ``..`` after a normal component (that
  could climb out through another symlink);
* hardlinks whose target is absolute, has ``..``, or is not an already
  extracted regular file inside the destination;
* device nodes, fifos and other special members;
* anything Python's ``tarfile.data_filter`` (where available) refuses.

Neutralised, not skipped: setuid/setgid/sticky bits are cleared (modes keep
their 0o777 part); owners are not restored (everything belongs to the agent's
user, or to ``owner`` when given: the user a user image's commands run as).
An existing file or symlink at a member's path is replaced; an existing
directory is never replaced by a non-directory (the member is skipped).
A truncated or corrupt archive fails the whole transfer.
"""

# fd- and lstat-level file handling is the point here (O_NOFOLLOW etc.)
# ruff: noqa: PTH101, PTH102, PTH103, PTH108, PTH118, PTH211
from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import tarfile
import threading

from cleanroom.agent import sysops
from cleanroom.agent.errors import GuestOperationFailed
from cleanroom.agent.messages import WorkspaceStats
from cleanroom.agent.protocol import ERR_WORKSPACE

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

__all__ = ["WorkspaceReceiver", "extract_tar_stream"]

_COPY = 64 * 1024
BUFFERED_BYTES = 1 << 20
"""Archives up to this size are held in memory and extracted at their end."""
_data_filter = getattr(tarfile, "data_filter", None)


class _Skip(Exception):
    """This member is refused; the message says why."""


def _parts(name: str) -> list[str]:
    if name.startswith("/"):
        raise _Skip("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Skip("'..' in path")
    return parts


Owner = tuple[int, int]


def _own(path: str, owner: Owner | None) -> None:
    if owner is not None:
        os.lchown(path, *owner)


def _parent_dir(root: str, parts: list[str], *, create: bool, owner: Owner | None = None) -> str:
    """The real directory holding ``parts[-1]``, creating missing directories if asked."""
    cur = root
    for name in parts[:-1]:
        cur = os.path.join(cur, name)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not create:
                raise _Skip(f"{cur} does not exist") from None
            os.mkdir(cur, 0o755)
            _own(cur, owner)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise _Skip("parent path is a symlink or not a directory")
    return cur


def _check_symlink_target(depth: int, target: str) -> None:
    if not target or target.startswith("/"):
        raise _Skip("symlink target is absolute or empty")
    comps = [c for c in target.split("/") if c not in ("", ".")]
    ups = 0
    while ups < len(comps) and comps[ups] == "..":
        ups += 1
    if ".." in comps[ups:]:
        raise _Skip("symlink target uses '..' after a name")
    if ups > depth:
        raise _Skip("symlink target escapes the workspace")


def _clear_slot(path: str) -> None:
    """Make room for a non-directory member at ``path`` (never removes a directory)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise _Skip("a directory exists at this path")
    os.unlink(path)


def _write_file(tf: tarfile.TarFile, member: tarfile.TarInfo, path: str, digest: Any = None) -> int:
    src = tf.extractfile(member)
    if src is None:
        raise _Skip("no data for regular file")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    written = 0
    try:
        while chunk := src.read(_COPY):
            if digest is not None:
                digest.update(chunk)  # hashed as it passes: the manifest needs no re-read
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            written += len(chunk)
        os.fchmod(fd, member.mode & 0o777)
    finally:
        os.close(fd)
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
    return written


def _extract_member(
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    root: str,
    owner: Owner | None = None,
    hashes: dict[str, str] | None = None,
) -> int | None:
    """Extract one member (owned by ``owner`` if given); the regular-file bytes
    written, or None for no file.

    Records a regular file's sha256 in ``hashes`` (relative path -> hex) if given.
    Raises _Skip for a refused member, OSError for a filesystem failure.
    """
    written = _make_member(tf, member, root, owner, hashes)
    if owner is not None and not member.islnk() and _parts(member.name):
        # A hard link shares its target's (already owned) inode.
        os.lchown(os.path.join(root, *_parts(member.name)), *owner)
    return written


def _make_member(
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    root: str,
    owner: Owner | None,
    hashes: dict[str, str] | None,
) -> int | None:
    parts = _parts(member.name)
    if not parts:
        return None  # the archive's own root ("./")
    if _data_filter is not None:
        try:
            _data_filter(member, root)
        except tarfile.FilterError as exc:
            raise _Skip(f"refused by tarfile data filter: {exc}") from None
    path = os.path.join(_parent_dir(root, parts, create=True, owner=owner), parts[-1])
    if member.isdir():
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o700)
        else:
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(path)
                os.mkdir(path, 0o700)
        return None
    rel = "/".join(parts)
    if hashes is not None:
        hashes.pop(rel, None)  # a later member replaces an earlier one
    if member.isreg():
        _clear_slot(path)
        digest = None if hashes is None else hashlib.sha256()
        written = _write_file(tf, member, path, digest)
        if hashes is not None and digest is not None:
            hashes[rel] = digest.hexdigest()
        return written
    if member.issym():
        _check_symlink_target(len(parts) - 1, member.linkname)
        _clear_slot(path)
        os.symlink(member.linkname, path)
        return None
    if member.islnk():
        lparts = _parts(member.linkname)
        if not lparts:
            raise _Skip("hardlink to the workspace root")
        src = os.path.join(_parent_dir(root, lparts, create=False), lparts[-1])
        try:
            sst = os.lstat(src)
        except FileNotFoundError:
            raise _Skip("hardlink target not extracted") from None
        if not stat.S_ISREG(sst.st_mode):
            raise _Skip("hardlink target is not a regular file")
        _clear_slot(path)
        os.link(src, path, follow_symlinks=False)
        if hashes is not None and (known := hashes.get("/".join(lparts))) is not None:
            hashes[rel] = known
        return 0
    raise _Skip("special file (device, fifo or other)")


def extract_tar_stream(
    stream: IO[bytes],
    dest: str,
    owner: Owner | None = None,
    hashes: dict[str, str] | None = None,
) -> WorkspaceStats:
    """Extract the tar archive read from ``stream`` into ``dest`` (created if missing),
    everything made owned by ``owner`` (uid, gid) when given.

    ``hashes``, if given, receives the sha256 of every regular file written
    (relative path -> hex digest), for the workspace manifest.

    Raises ``tarfile.TarError`` for a corrupt archive, ``OSError`` for a
    filesystem failure; refused members are counted (and logged), not raised.
    """
    os.makedirs(dest, exist_ok=True)
    root = os.path.realpath(dest)
    files = nbytes = skipped = 0
    dirs: list[tuple[str, int, float]] = []
    with tarfile.open(fileobj=stream, mode="r|*") as tf:
        for member in tf:
            try:
                written = _extract_member(tf, member, root, owner, hashes)
            except (_Skip, ValueError) as why:  # ValueError: e.g. a NUL in a name
                skipped += 1
                sys.stderr.write(f"cleanroom-agent: skipped {member.name!r}: {why}\n")
                continue
            if written is not None:
                files += 1
                nbytes += written
            elif member.isdir() and _parts(member.name):
                dirs.append((_dir_path(root, member.name), member.mode & 0o777, member.mtime))
    # Directory modes last (deepest first), so a read-only directory still got its files.
    # chmod may follow: these paths stay real directories (nothing replaces a directory).
    for path, mode, mtime in reversed(dirs):
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
    return WorkspaceStats(files=files, bytes=nbytes, skipped=skipped)


def _dir_path(root: str, name: str) -> str:
    return os.path.join(root, *_parts(name))


class WorkspaceReceiver:
    """One workspace transfer: :meth:`feed` chunks, then :meth:`finish`.

    ``can_mount`` says whether read-only may be enforced with a bind mount (the
    agent runs as root in its own mount namespace: the VM's init, or a test
    under ``unshare -m``). Without it a read-only request fails, rather than
    pretending. ``unbind_first`` removes the read-only bind mount an earlier
    transfer made on ``dest``. ``owner`` (uid, gid) owns what is extracted.
    """

    def __init__(
        self,
        dest: str,
        *,
        read_only: bool,
        can_mount: bool,
        unbind_first: bool = False,
        owner: Owner | None = None,
    ) -> None:
        self._dest = dest
        self._owner = owner
        self._read_only = read_only
        if read_only and not can_mount:
            raise GuestOperationFailed(ERR_WORKSPACE, "read-only workspace needs mount rights")
        # A previous read-only transfer left its bind mount: lift it to write again.
        if unbind_first:
            try:
                sysops.unmount(dest)
            except OSError as exc:
                raise GuestOperationFailed(ERR_WORKSPACE, f"unmount {dest}: {exc}") from exc
        self._stats: WorkspaceStats | None = None
        self.hashes: dict[str, str] = {}
        """sha256 of each regular file extracted (relative path -> hex), once finished."""
        self._error: BaseException | None = None
        # Chunks are held until BUFFERED_BYTES have come; only a larger archive gets
        # an extractor thread fed through a pipe while it arrives. A small one (the
        # common case) is extracted at its end, in the caller's thread: no thread
        # start and no hand-offs between two threads (milliseconds under emulation).
        self._pending: list[bytes] | None = []
        self._pending_bytes = 0
        self._thread: threading.Thread | None = None
        self._wfd = -1

    def _extract(self, stream: IO[bytes]) -> None:
        try:
            self._stats = extract_tar_stream(stream, self._dest, self._owner, self.hashes)
        except BaseException as exc:  # noqa: BLE001 -- reported by finish()
            self._error = exc

    def _extract_piped(self, rfd: int) -> None:
        with os.fdopen(rfd, "rb") as stream:
            self._extract(stream)
            # Drain trailing padding (or the rest after a failure) so feed() never blocks.
            while stream.read(_COPY):
                pass

    def _start_thread(self) -> None:
        rfd, self._wfd = os.pipe()
        self._thread = threading.Thread(target=self._extract_piped, args=(rfd,), daemon=True)
        self._thread.start()
        pending, self._pending = self._pending or [], None
        for chunk in pending:
            self._write(chunk)

    def feed(self, chunk: bytes) -> None:
        """Pass one chunk to the extractor (blocks while it is behind)."""
        if self._pending is not None:
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            if self._pending_bytes > BUFFERED_BYTES:
                self._start_thread()
            return
        self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        if self._wfd < 0:
            return  # aborted
        view = memoryview(chunk)
        while view:
            n = os.write(self._wfd, view)
            view = view[n:]

    @property
    def threaded(self) -> bool:
        """Whether an extractor thread took the stream (the archive outgrew the buffer)."""
        return self._thread is not None

    def finish(self) -> WorkspaceStats:
        """End of stream: wait for extraction, apply read-only; raise GuestOperationFailed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._extract(io.BytesIO(b"".join(pending)))
        self.abort()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None or self._stats is None:
            raise GuestOperationFailed(ERR_WORKSPACE, f"extraction failed: {self._error}")
        if self._read_only:
            try:
                sysops.bind_read_only(self._dest)
            except OSError as exc:
                raise GuestOperationFailed(ERR_WORKSPACE, f"read-only mount: {exc}") from exc
        return self._stats

    def cancel(self) -> None:
        """Give up: end the stream and wait for the extractor, ignoring its outcome."""
        self.abort()
        if self._thread is not None:
            self._thread.join()

    def abort(self) -> None:
        """Close the stream (the extractor sees EOF; held chunks are dropped); safe to
        call twice."""
        self._pending = None
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1
