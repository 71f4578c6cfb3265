"""API tokens: created, listed and revoked by name, stored hashed, checked per request.

A token is ``cr_`` followed by 32 random bytes (URL-safe base64); it is shown
once, by :meth:`TokenStore.create`. The store keeps only each token's SHA-256
(a 256-bit random secret needs no salt or slow hash) in a JSON file, by
default ``$XDG_STATE_HOME/cleanroom/tokens.json``::

    {"version": 1, "tokens": [{"name": "ci", "sha256": "<hex>", "created_at": "..."}]}

The file is 0600, replaced atomically (a temporary file renamed over it)
under an exclusive lock, so concurrent ``cleanroom token`` commands never
lose each other's changes. The server's :meth:`TokenStore.verify` stats the
file on every call and re-reads it when it changed, so a revocation takes
effect on the next request, without a restart. A file another user owns or
may write, or one that does not parse, fails closed: no token is accepted
(``ConfigInvalid`` says why).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cleanroom import paths
from cleanroom._files import write_private
from cleanroom.errors import ConfigInvalid, InvalidRequest, NotFound

__all__ = ["TOKEN_PREFIX", "TokenRecord", "TokenStore", "default_token_file", "token_digest"]

TOKEN_PREFIX = "cr_"  # noqa: S105 - a prefix, not a secret
_SECRET_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
MAX_TOKEN_LENGTH = 256
"""Longer presented tokens are refused without hashing them."""
_MAX_FILE_BYTES = 4 * 1024 * 1024


def default_token_file() -> Path:
    """``$XDG_STATE_HOME/cleanroom/tokens.json`` (the server's state directory)."""
    return paths.state_dir() / "tokens.json"


def token_digest(token: str) -> str:
    """The stored form of ``token``: its SHA-256, lower-case hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """One stored token: its name, the SHA-256 of the secret, when it was made."""

    name: str
    sha256: str
    created_at: str


class TokenStore:
    """The token file at ``path`` (default :func:`default_token_file`).

    ``create``/``revoke`` change the file (under its lock); ``verify`` answers
    from a cached copy refreshed whenever the file's identity (inode, size,
    change time) differs from the copy's. Thread-safe.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = default_token_file() if path is None else path
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._records: tuple[TokenRecord, ...] = ()

    # -- reading -------------------------------------------------------------------

    def records(self) -> tuple[TokenRecord, ...]:
        """Every stored token (never the secrets: they are not stored)."""
        return _read(self.path)

    def verify(self, token: str) -> str | None:
        """The name of the stored token ``token`` is, or ``None``.

        Every stored digest is compared (in constant time), so the answer's
        timing says nothing about which digest came close. Raises
        ``ConfigInvalid`` when the file cannot be trusted or parsed.
        """
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = token_digest(token)
        found: str | None = None
        for record in self._current():
            if hmac.compare_digest(record.sha256, digest):
                found = record.name
        return found

    def _current(self) -> tuple[TokenRecord, ...]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            stamp: tuple[int, ...] | None = None
        except OSError as exc:
            raise _unreadable(self.path, exc) from exc
        else:
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if stamp is None:
                self._stamp, self._records = None, ()
            elif stamp != self._stamp:
                self._records = _read(self.path)
                self._stamp = stamp
            return self._records

    # -- changing ------------------------------------------------------------------

    def create(self, name: str) -> str:
        """Store a new token named ``name``; the token (shown only now).

        Raises ``InvalidRequest`` for a bad name or one already in use.
        """
        if _NAME.fullmatch(name) is None:
            raise InvalidRequest(
                f"invalid token name {name!r} (letters, digits, '.', '_', '-'; at most 64)",
                details={"name": name},
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)
        with self._locked():
            records = list(_read(self.path))
            if any(record.name == name for record in records):
                raise InvalidRequest(f"a token named {name!r} exists", details={"name": name})
            now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            records.append(TokenRecord(name, token_digest(token), now))
            _write(self.path, records)
        return token

    def revoke(self, name: str) -> None:
        """Remove the token named ``name``; raises ``NotFound`` when there is none."""
        with self._locked():
            records = list(_read(self.path))
            kept = [record for record in records if record.name != name]
            if len(kept) == len(records):
                raise NotFound(f"no token named {name!r}", details={"name": name})
            _write(self.path, kept)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(
                f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
            )
        except OSError as exc:
            raise _unreadable(self.path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _unreadable(path: Path, exc: OSError | str) -> ConfigInvalid:
    reason = exc if isinstance(exc, str) else (exc.strerror or str(exc))
    return ConfigInvalid(
        f"cannot use the token file {path}: {reason}",
        details={"source": str(path), "problems": [f"{path}:1:1: {reason}"]},
    )


def _read(path: Path) -> tuple[TokenRecord, ...]:
    """The records in ``path`` (none when it does not exist); ``ConfigInvalid`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise _unreadable(path, "not a regular file owned by this user")
        if st.st_mode & 0o077:
            raise _unreadable(path, f"mode {stat.S_IMODE(st.st_mode):04o}: must be 0600")
        data = file.read(_MAX_FILE_BYTES + 1)
    if len(data) > _MAX_FILE_BYTES:
        raise _unreadable(path, "too large")
    try:
        return _parse(json.loads(data))
    except (ValueError, TypeError) as exc:
        raise _unreadable(path, f"not a token file ({exc})") from exc


def _parse(doc: Any) -> tuple[TokenRecord, ...]:
    if not isinstance(doc, dict) or set(doc) != {"version", "tokens"} or doc["version"] != 1:
        raise ValueError('expected {"version": 1, "tokens": [...]}')
    if not isinstance(doc["tokens"], list):
        raise TypeError("tokens must be a list")
    records: list[TokenRecord] = []
    for item in doc["tokens"]:
        if not isinstance(item, dict) or set(item) != {"name", "sha256", "created_at"}:
            raise ValueError("each token is {name, sha256, created_at}")
        name, digest, created = item["name"], item["sha256"], item["created_at"]
        if not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise ValueError(f"bad token name {name!r}")
        if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
            raise ValueError(f"bad digest for {name!r}")
        if not isinstance(created, str):
            raise TypeError(f"bad created_at for {name!r}")
        records.append(TokenRecord(name, digest, created))
    return tuple(records)


def _write(path: Path, records: list[TokenRecord]) -> None:
    """Replace ``path`` atomically with ``records`` (0600, synced)."""
    doc = {
        "version": 1,
        "tokens": [
            {"name": r.name, "sha256": r.sha256, "created_at": r.created_at} for r in records
        ],
    }
    data = (json.dumps(doc, indent=2) + "\n").encode()
    try:
        write_private(path, data)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
