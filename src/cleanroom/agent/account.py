"""Who a command runs as inside a user image: an OCI ``User`` resolved against the
image's own ``/etc/passwd`` and ``/etc/group``.

Stdlib only: this module runs inside the guest. It parses text (never calls
``getpwnam``: the agent's C library reads the runtime's files, not the image's)
and follows what container runtimes do:

* ``""`` is root (uid 0, gid 0);
* ``name`` or ``uid`` looks the user up in passwd: a name that is not there is
  an error; a uid that is not there runs with gid 0 and ``HOME=/``;
* ``user:group`` takes the group from group (by name, or any number);
* without an explicit group the user's supplementary groups are those whose
  member list names the user.

Malformed passwd/group lines are ignored, as the C library does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Account", "AccountError", "parse_group", "parse_passwd", "resolve_account"]

_MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "unchanged" to setuid(2)


class AccountError(ValueError):
    """The image's ``User`` cannot be resolved (the message says why)."""


@dataclass(frozen=True)
class Account:
    """A resolved user: ids for ``setgroups``/``setgid``/``setuid`` and its home."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    """Supplementary group ids (the primary gid included)."""
    home: str
    name: str | None = None
    """The passwd name, if the user has an entry."""


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _id(text: str) -> int | None:
    if not text.isdigit() or not text.isascii():
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def _records(text: str, count: int) -> Iterator[list[str]]:
    """The fields of each line of ``count`` colon-separated fields that has a name
    (comments and NIS ``+``/``-`` lines are skipped)."""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) == count and fields[0] and not line.startswith(("#", "+", "-")):
            yield fields


def parse_passwd(text: str) -> list[PasswdEntry]:
    """``name:pw:uid:gid:gecos:home:shell`` lines; malformed ones are skipped."""
    entries: list[PasswdEntry] = []
    for fields in _records(text, 7):
        uid, gid = _id(fields[2]), _id(fields[3])
        if uid is not None and gid is not None:
            entries.append(PasswdEntry(fields[0], uid, gid, fields[5]))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """``name:pw:gid:member,member`` lines; malformed ones are skipped."""
    entries: list[GroupEntry] = []
    for fields in _records(text, 4):
        gid = _id(fields[2])
        if gid is not None:
            members = tuple(m for m in fields[3].split(",") if m)
            entries.append(GroupEntry(fields[0], gid, members))
    return entries


def _find_user(spec: str, passwd: list[PasswdEntry]) -> PasswdEntry | None:
    numeric = _id(spec)
    for entry in passwd:
        if (numeric is not None and entry.uid == numeric) or (
            numeric is None and entry.name == spec
        ):
            return entry
    return None


def _find_group(spec: str, groups: list[GroupEntry]) -> int:
    numeric = _id(spec)
    if numeric is not None:
        return numeric  # a number needs no entry, as in every container runtime
    for entry in groups:
        if entry.name == spec:
            return entry.gid
    raise AccountError(f"group {spec!r} is not in the image's /etc/group")


def resolve_account(user: str, passwd_text: str, group_text: str) -> Account:
    """Resolve an OCI ``User`` (see the module docstring); raises :class:`AccountError`."""
    user_part, sep, group_part = user.partition(":")
    if sep and not group_part:
        raise AccountError(f"user {user!r} has an empty group")
    if not user_part:
        if sep:
            raise AccountError(f"user {user!r} has an empty name")
        user_part = "0"
    passwd = parse_passwd(passwd_text)
    entry = _find_user(user_part, passwd)
    if entry is None:
        found = _id(user_part)
        if found is None:
            raise AccountError(f"user {user_part!r} is not in the image's /etc/passwd")
        # Root without an entry still gets its usual home.
        uid, gid, home, name = found, 0, "/root" if found == 0 else "/", None
    else:
        uid, gid, home, name = entry.uid, entry.gid, entry.home or "/", entry.name
    groups = parse_group(group_text)
    if group_part:
        gid = _find_group(group_part, groups)
        extra: tuple[int, ...] = ()
    elif name is not None:
        extra = tuple(g.gid for g in groups if name in g.members)
    else:
        extra = ()
    supplementary = tuple(dict.fromkeys((gid, *extra)))
    return Account(uid=uid, gid=gid, groups=supplementary, home=home, name=name)
