"""Listen addresses and the sockets the server binds itself.

``unix:///path`` sockets are created 0600 (bound under a 0177 umask, so no
other user can ever connect, not even briefly) in a directory owned by this
user that no one else may write (checked at every bind; a new one is made
0700). A lock file (opened with ``O_NOFOLLOW``: never through a symlink)
next to the socket makes "one server per socket" race-free: the lock holder
may replace a stale socket file left by a dead server; a second server exits
with ``server_unavailable``. ``tcp://HOST:PORT`` binds loopback only unless
remote listening is explicitly allowed.

What a caller must show depends on the listener's kind (:data:`LISTENER_KINDS`):
the unix socket admits its owner (the filesystem checks), a TCP listener
wants a bearer token on every request, and TLS too unless it is on loopback.
A further kind (a tailnet listener, say) is one more table entry with its own
parsing, binding, authentication and TLS rule.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from cleanroom._files import closed_on_error
from cleanroom.errors import InvalidRequest, ServerUnavailable
from cleanroom.loopback import is_loopback
from cleanroom.server.auth import Authenticator, BearerTokens, OwnerOnly
from cleanroom.tokens import TokenStore

__all__ = [
    "LISTENER_KINDS",
    "BoundListener",
    "ListenAddress",
    "ListenerKind",
    "TlsNeed",
    "bind",
    "is_loopback",
    "listener_kind",
    "parse_listen",
]

_BACKLOG = 128


@dataclass(frozen=True)
class ListenAddress:
    """Where to listen: a unix socket path, or a TCP host and port."""

    scheme: str
    """A key of :data:`LISTENER_KINDS`."""
    path: Path | None = None
    host: str | None = None
    port: int | None = None

    def url(self) -> str:
        """The address as a ``unix://`` or ``tcp://`` URL."""
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def _parse_unix(url: str) -> ListenAddress:
    path = Path(url[len("unix://") :])
    if not path.is_absolute():
        raise InvalidRequest(f"unix socket path must be absolute: {url!r}")
    return ListenAddress(scheme="unix", path=path)


def _parse_tcp(url: str) -> ListenAddress:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"invalid port in {url!r}") from exc
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise InvalidRequest(f"expected tcp://HOST:PORT, got {url!r}")
    return ListenAddress(scheme="tcp", host=parts.hostname, port=port)


def parse_listen(url: str) -> ListenAddress:
    """Parse ``unix:///abs/path`` or ``tcp://HOST:PORT``; raises ``InvalidRequest``."""
    scheme = url.partition("://")[0] if "://" in url else ""
    kind = LISTENER_KINDS.get(scheme)
    if kind is None:
        raise InvalidRequest(
            f"unsupported listen address {url!r} (use unix:///path or tcp://HOST:PORT)"
        )
    return kind.parse(url)


@dataclass
class BoundListener:
    """A bound, listening socket plus what must be undone when the server stops."""

    address: ListenAddress
    sock: socket.socket
    lock_fd: int | None = None
    inode: int | None = None
    closed: bool = field(default=False)

    def url(self) -> str:
        """The actual address (with the kernel-chosen port for ``tcp://...:0``)."""
        if self.address.scheme == "tcp":
            host, port = self.sock.getsockname()[:2]
            return ListenAddress(scheme="tcp", host=host, port=port).url()
        return self.address.url()

    def close(self) -> None:
        """Close the socket, remove the socket file if it is still ours, release the lock."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        path = self.address.path
        if path is not None and self.inode is not None:
            with contextlib.suppress(OSError):
                if path.lstat().st_ino == self.inode:  # never remove a successor's socket
                    path.unlink()
        if self.lock_fd is not None:
            os.close(self.lock_fd)


def bind(address: ListenAddress, *, allow_remote: bool = False) -> BoundListener:
    """Bind and listen on ``address``.

    Raises ``ServerUnavailable`` when another server already holds the socket,
    ``InvalidRequest`` for a non-loopback TCP host without ``allow_remote`` or a
    non-socket file in the way.
    """
    return listener_kind(address).bind(address, allow_remote)


def _bind_unix_address(address: ListenAddress, allow_remote: bool) -> BoundListener:
    assert address.path is not None
    return _bind_unix(address, address.path)


def _bind_tcp_address(address: ListenAddress, allow_remote: bool) -> BoundListener:
    assert address.host is not None
    assert address.port is not None
    return _bind_tcp(address, address.host, address.port, allow_remote=allow_remote)


def _already(path: Path) -> ServerUnavailable:
    return ServerUnavailable(
        f"a cleanroom server is already listening on unix://{path}",
        details={"address": f"unix://{path}", "reason": "address_in_use"},
    )


def _bind_unix(address: ListenAddress, path: Path) -> BoundListener:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_socket_dir(path.parent)
        lock_fd = os.open(
            f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
    except OSError as exc:
        raise InvalidRequest(f"cannot use {path.parent}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(lock_fd)
        raise _already(path) from exc
    try:
        with closed_on_error(lock_fd):
            _remove_stale(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old_umask)
            sock.listen(_BACKLOG)
            return BoundListener(address, sock, lock_fd=lock_fd, inode=path.lstat().st_ino)
    except OSError as exc:
        raise InvalidRequest(f"cannot listen on unix://{path}: {exc.strerror}") from exc


def _check_socket_dir(directory: Path) -> None:
    """Refuse a socket directory another user owns or may write (they could
    replace the socket or its lock); ``PermissionError`` says why."""
    st = directory.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{directory} is owned by uid {st.st_uid}, not {os.getuid()}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"{directory} is writable by other users")


def _remove_stale(path: Path) -> None:
    """Unlink a socket file nobody answers on; refuse to touch anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidRequest(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        path.unlink(missing_ok=True)  # stale: its server is gone
        return
    finally:
        probe.close()
    raise _already(path)  # something answers but does not hold the lock


def _bind_tcp(address: ListenAddress, host: str, port: int, *, allow_remote: bool) -> BoundListener:
    if not allow_remote and not is_loopback(host):
        raise InvalidRequest(
            f"refusing to listen on non-loopback address {host!r} without --allow-remote",
            details={"host": host},
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
            sock.listen(_BACKLOG)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServerUnavailable(
                f"address {address.url()} is already in use",
                details={"address": address.url(), "reason": "address_in_use"},
            ) from exc
        raise InvalidRequest(f"cannot listen on {address.url()}: {exc}") from exc
    return BoundListener(address, sock)


TlsNeed = Literal["never", "optional", "required"]
"""Whether a listener speaks TLS: never, when asked (``serve --tls``), or always."""


@dataclass(frozen=True)
class ListenerKind:
    """One kind of listen address: its parsing, its binding, and what callers must show."""

    scheme: str
    parse: Callable[[str], ListenAddress]
    """``scheme://...`` -> the address; raises ``InvalidRequest``."""
    bind: Callable[[ListenAddress, bool], BoundListener]
    """``(address, allow_remote)`` -> a listening socket."""
    authenticator: Callable[[TokenStore], Authenticator]
    """The listener's gate, given the server's token store: the unix socket's admits
    its owner (only the owner can connect at all), TCP's wants a bearer token on
    every request (see :mod:`cleanroom.server.auth`)."""
    tls: Callable[[ListenAddress], TlsNeed]


def _tcp_tls(address: ListenAddress) -> TlsNeed:
    return "optional" if address.host is not None and is_loopback(address.host) else "required"


LISTENER_KINDS: Mapping[str, ListenerKind] = MappingProxyType(
    {
        "unix": ListenerKind(
            "unix", _parse_unix, _bind_unix_address, lambda _: OwnerOnly(), lambda _: "never"
        ),
        "tcp": ListenerKind("tcp", _parse_tcp, _bind_tcp_address, BearerTokens, _tcp_tls),
    }
)
"""Every listener kind by scheme."""


def listener_kind(address: ListenAddress) -> ListenerKind:
    """The kind of ``address`` (``InvalidRequest`` for a scheme no kind has)."""
    kind = LISTENER_KINDS.get(address.scheme)
    if kind is None:
        raise InvalidRequest(f"unsupported listener kind {address.scheme!r}")
    return kind
