"""User images: the root filesystem a run's command sees, apart from the agent's own runtime.

A user image comes from an OCI/Docker registry, a Debian package list or an
imported archive. Whatever its source, it ends as one read-only ext4 file in
the content-addressed image cache plus the parts of its config that cleanroom
honours. Backends attach that file read-only (never written; each run writes
to its own copy-on-write layer) and the guest agent runs commands inside it,
while the agent itself keeps running from cleanroom's own runtime image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.errors import ImageUnavailable

__all__ = ["ImageConfig", "UserImage"]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's config that apply to commands run in it.

    Entrypoint and Cmd are deliberately absent: cleanroom runs the command it is given.
    """

    env: tuple[tuple[str, str], ...] = ()
    """``Env`` in order (``PATH`` included), as name/value pairs."""
    user: str = ""
    """OCI ``User``: ``""`` (root), ``name``, ``uid``, ``uid:gid`` or ``name:group``;
    resolved inside the guest against the image's own ``/etc/passwd`` and ``/etc/group``."""
    working_dir: str = ""
    """OCI ``WorkingDir`` (informational: commands run in the workspace unless told otherwise)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_dict`` reads it back)."""
        return {
            "env": [[k, v] for k, v in self.env],
            "user": self.user,
            "working_dir": self.working_dir,
        }

    @classmethod
    def from_dict(cls, data: object) -> ImageConfig:
        """Parse ``to_dict`` output strictly; raises ``ImageUnavailable`` on any deviation."""
        if not isinstance(data, dict) or set(data) != {"env", "user", "working_dir"}:
            raise ImageUnavailable("malformed image config", details={"config": repr(data)[:200]})
        env = data["env"]
        user = data["user"]
        working_dir = data["working_dir"]
        if not isinstance(env, list) or not isinstance(user, str):
            raise ImageUnavailable("malformed image config")
        if not isinstance(working_dir, str):
            raise ImageUnavailable("malformed image config")
        pairs: list[tuple[str, str]] = []
        for item in env:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(x, str) for x in item)
            ):
                raise ImageUnavailable("malformed image config env entry")
            pairs.append((item[0], item[1]))
        return cls(env=tuple(pairs), user=user, working_dir=working_dir)


@dataclass(frozen=True)
class UserImage:
    """A user image ready to attach to a guest."""

    key: str
    """Content address: ``sha256:<64 hex>`` of the image manifest, or of the resolved
    Debian package set, or of the imported archive's content."""
    source: str
    """Where it came from, for people: the pinned ref, ``debian:<suite>`` or ``import:<name>``."""
    rootfs: Path
    """The read-only ext4 base in the image cache. Never written by anyone after it is made."""
    config: ImageConfig
    size_bytes: int
    """The ext4 file's apparent size."""
